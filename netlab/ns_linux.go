package netlab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const netnsDir = "/run/netns"

// inNS runs f on an OS thread that is in the namespace ns. Sockets f creates
// belong to that namespace; goroutines f starts do not. The thread is never
// returned to the runtime, which discards it when the goroutine ends.
func inNS(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// createNS makes a named network namespace, visible to `ip netns`.
func createNS(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // NewNamed moves this thread into the new namespace
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

func deleteNS(name string) error {
	err := netns.DeleteNamed(name)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// A crash between creating the file and bind-mounting the namespace
	// leaves a plain file that cannot be unmounted: remove it all the same.
	p := filepath.Join(netnsDir, name)
	if uerr := unix.Unmount(p, unix.MNT_DETACH); uerr != nil && !errors.Is(uerr, unix.EINVAL) && !errors.Is(uerr, unix.ENOENT) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %w", name, rerr)
	}
	return nil
}

// labNamespaces lists the namespaces of a lab, or of every lab if name is "".
func labNamespaces(name string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if name == "" && strings.HasPrefix(n, Prefix) || name != "" && (n == WireNS(name) || strings.HasPrefix(n, WireNS(name)+".")) {
			out = append(out, n)
		}
	}
	return out, nil
}

// setSysctl writes a network sysctl inside ns; /proc/sys/net shows the
// namespace of the thread that opens it.
func setSysctl(ns netns.NsHandle, key, val string) error {
	return inNS(ns, func() error {
		p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if err := os.WriteFile(p, []byte(val), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, val, err)
		}
		return nil
	})
}

// nsInode identifies a namespace, as seen through /proc/PID/ns/net.
func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pidsIn lists the processes (other than this one) that live in the named
// namespaces.
func pidsIn(names []string) []int {
	inodes := map[uint64]bool{}
	for _, n := range names {
		if ino, err := nsInode(filepath.Join(netnsDir, n)); err == nil {
			inodes[ino] = true
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && inodes[ino] && allThreadsIn(pid, inodes) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// allThreadsIn tells whether every thread of pid is in one of the
// namespaces. A program that entered a lab host on one thread (as Host.Do
// does, and the runtime may pick the main thread for it) lives outside the
// lab and must not be killed with it.
func allThreadsIn(pid int, inodes map[uint64]bool) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, t := range tasks {
		ino, err := nsInode(fmt.Sprintf("/proc/%d/task/%s/ns/net", pid, t.Name()))
		if err == nil && !inodes[ino] {
			return false
		}
	}
	return true
}

// killAll ends the processes in the namespaces: SIGTERM, then SIGKILL for
// what is left after grace.
func killAll(names []string, grace time.Duration) {
	signalAll := func(sig syscall.Signal) int {
		pids := pidsIn(names)
		for _, pid := range pids {
			_ = syscall.Kill(pid, sig)
		}
		return len(pids)
	}
	if signalAll(syscall.SIGTERM) == 0 {
		return
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(pidsIn(names)) == 0 {
			return
		}
	}
	signalAll(syscall.SIGKILL)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(pidsIn(names)) == 0 {
			return
		}
	}
}

// procStart is a process's start time in clock ticks since boot, which with
// its pid identifies it across pid reuse; 0 if the process does not exist.
func procStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// ProcCPU returns a process's user+system CPU time.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	const hz = 100 // USER_HZ is 100 on every Linux ABI Go supports
	return time.Duration(ut+st) * time.Second / hz, nil
}
