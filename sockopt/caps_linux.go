package sockopt

import "golang.org/x/sys/unix"

// BPFCapsMissing names what the process lacks, among CAP_BPF, CAP_PERFMON
// and (with netAdmin) CAP_NET_ADMIN, to load the relay's BPF programs:
// nothing with CAP_SYS_ADMIN, which stands for all three there. A relay
// run by an unprivileged user with too few capabilities gets EPERM, or a
// verifier error that names a helper (bpf_skc_to_tcp_sock without
// CAP_PERFMON), and this says which capability to grant.
func BPFCapsMissing(netAdmin bool) []string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if unix.Capget(&hdr, &data[0]) != nil {
		return nil
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) {
		return nil
	}
	var missing []string
	if !has(unix.CAP_BPF) {
		missing = append(missing, "CAP_BPF")
	}
	if netAdmin && !has(unix.CAP_NET_ADMIN) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if !has(unix.CAP_PERFMON) {
		missing = append(missing, "CAP_PERFMON")
	}
	return missing
}
