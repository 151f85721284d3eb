// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Options for the subflows of Multipath TCP connections. An MPTCP socket
// refuses TCP_RTO_MIN_US, TCP_USER_TIMEOUT, TCP_THIN_LINEAR_TIMEOUTS and
// SO_MAX_PACING_RATE, but its listening subflow is a TCP socket that takes
// them, and every subflow it accepts, the first and the joins, inherits
// them from it before its handshake's first round-trip sample (from which
// the RTO estimate takes its floor, and keeps it).
//
// set_listener is a TCP socket iterator: user space puts a listening
// address and the values in target, then reads the iterator, which runs
// the program over the TCP sockets of its network namespace; the program
// sets the values on the listening sockets bound to that address.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define SOL_SOCKET 1
#define SOL_TCP 6
#define SO_MAX_PACING_RATE 47
#define TCP_THIN_LINEAR_TIMEOUTS 16
#define TCP_USER_TIMEOUT 18
#define TCP_LISTEN 10

// The fields read here; CO-RE relocates them against the running kernel.
struct bpf_iter_meta {
	void *seq;
} __attribute__((preserve_access_index));

struct in6_addr {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
	unsigned char skc_state;
	__u16 skc_num;         // local port, host order
	__u32 skc_rcv_saddr;   // local IPv4 address
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct opts {
	__u32 pacing;          // SO_MAX_PACING_RATE, bytes/s (~0U: no cap)
	__u32 rto_min_us;      // TCP_BPF_RTO_MIN (0: leave)
	__u32 user_timeout_ms; // TCP_USER_TIMEOUT (0: the kernel's)
	__u32 thin;            // TCP_THIN_LINEAR_TIMEOUTS
};

// target is the listening address to look for, and the values to set.
struct target {
	__u32 family; // AF_INET or AF_INET6
	__u32 port;
	__u32 addr[4]; // network order; an IPv4 address in addr[0]
	struct opts o;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct target);
} target SEC(".maps");

enum {
	COUNT_SET = 0,    // listening sockets given the values
	COUNT_FAILED = 1, // those that refused one or more
	COUNT_N = 2,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, COUNT_N);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("iter/tcp")
int set_listener(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	if (!sk || sk->skc_state != TCP_LISTEN)
		return 0;
	__u32 zero = 0;
	struct target *t = bpf_map_lookup_elem(&target, &zero);
	if (!t || sk->skc_num != t->port || sk->skc_family != t->family)
		return 0;
	if (t->family == AF_INET) {
		if (sk->skc_rcv_saddr != t->addr[0])
			return 0;
	} else {
		for (int i = 0; i < 4; i++)
			if (sk->skc_v6_rcv_saddr.in6_u.u6_addr32[i] != t->addr[i])
				return 0;
	}
	struct opts *o = &t->o;
	int failed = 0, v;
	if (o->rto_min_us) {
		v = o->rto_min_us;
		failed |= bpf_setsockopt(sk, SOL_TCP, TCP_BPF_RTO_MIN, &v, sizeof(v));
	}
	v = o->user_timeout_ms;
	failed |= bpf_setsockopt(sk, SOL_TCP, TCP_USER_TIMEOUT, &v, sizeof(v));
	v = o->thin;
	failed |= bpf_setsockopt(sk, SOL_TCP, TCP_THIN_LINEAR_TIMEOUTS, &v, sizeof(v));
	// bpf_setsockopt takes an int here; ~0U means no cap.
	v = o->pacing;
	failed |= bpf_setsockopt(sk, SOL_SOCKET, SO_MAX_PACING_RATE, &v, sizeof(v));
	__u32 which = failed ? COUNT_FAILED : COUNT_SET;
	__u64 *n = bpf_map_lookup_elem(&counts, &which);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
