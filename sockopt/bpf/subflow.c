// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Options for the subflows of Multipath TCP connections. An MPTCP socket
// refuses TCP_RTO_MIN_US, TCP_USER_TIMEOUT, TCP_THIN_LINEAR_TIMEOUTS and
// SO_MAX_PACING_RATE, but each of its subflows is a TCP socket that takes
// them. Two programs set them on the TCP sockets of registered listeners:
//
// - subflow_opts (sock_ops) on every connection as its handshake ends,
//   before data moves: the first subflow and the joins, which the kernel
//   makes in the listener's cgroup;
// - set_listener (a TCP socket iterator, run by user space when it
//   registers a listener or changes its options) on the listening socket
//   itself, an MPTCP listener's subflow, whose values each connection
//   inherits: the RTO estimator takes its floor from the handshake's
//   round-trip sample, before the sock_ops program runs, and keeps it.
//
// listeners maps a network namespace cookie and a local port to the
// values; user space fills it, with the kernel's defaults for options
// the configuration leaves unset.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

struct sock_common {
	unsigned char skc_state;
	__u16 skc_num; // local port, host order
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct key {
	__u64 netns; // bpf_get_netns_cookie
	__u32 port;  // local port, host order
	__u32 pad;
};

struct opts {
	__u32 pacing;          // SO_MAX_PACING_RATE, bytes/s (~0U: no pacing)
	__u32 rto_min_us;      // TCP_BPF_RTO_MIN (0: leave)
	__u32 user_timeout_ms; // TCP_USER_TIMEOUT (0: the kernel's)
	__u32 thin;            // TCP_THIN_LINEAR_TIMEOUTS
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct key);
	__type(value, struct opts);
} listeners SEC(".maps");

// target is the listening port set_listener looks for, in the network
// namespace it walks, and the values it sets there.
struct target {
	__u32 port;
	__u32 pad;
	struct opts o;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct target);
} iter_target SEC(".maps");

enum {
	COUNT_SET = 0,       // connections given their options
	COUNT_FAILED = 1,    // connections that refused one at least
	COUNT_LISTEN = 2,    // listening sockets given them
	COUNT_LISTEN_FAILED = 3,
	COUNT_N = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_N);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &which);
	if (n)
		(*n)++;
}

// set_all sets o's options on sk (a sock_ops context, or a socket) and
// tells whether one or more failed.
#define set_all(sk, o)                                                                   \
	({                                                                               \
		int failed_ = 0, v_;                                                     \
		if ((o)->rto_min_us) {                                                   \
			v_ = (o)->rto_min_us;                                            \
			failed_ |= bpf_setsockopt(sk, SOL_TCP, TCP_BPF_RTO_MIN, &v_, sizeof(v_)); \
		}                                                                        \
		v_ = (o)->user_timeout_ms;                                               \
		failed_ |= bpf_setsockopt(sk, SOL_TCP, TCP_USER_TIMEOUT, &v_, sizeof(v_));     \
		v_ = (o)->thin;                                                          \
		failed_ |= bpf_setsockopt(sk, SOL_TCP, TCP_THIN_LINEAR_TIMEOUTS, &v_, sizeof(v_)); \
		/* bpf_setsockopt takes an int here; ~0U means no pacing. */             \
		v_ = (o)->pacing;                                                        \
		failed_ |= bpf_setsockopt(sk, SOL_SOCKET, SO_MAX_PACING_RATE, &v_, sizeof(v_)); \
		failed_;                                                                 \
	})

SEC("sockops")
int subflow_opts(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	struct key k = {
		.netns = bpf_get_netns_cookie(skops),
		.port = skops->local_port,
	};
	struct opts *o = bpf_map_lookup_elem(&listeners, &k);
	if (!o)
		return 1;
	count(set_all(skops, o) ? COUNT_FAILED : COUNT_SET);
	return 1;
}

SEC("iter/tcp")
int set_listener(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	if (!sk || sk->skc_state != TCP_LISTEN)
		return 0;
	__u32 zero = 0;
	struct target *t = bpf_map_lookup_elem(&iter_target, &zero);
	if (!t || sk->skc_num != t->port)
		return 0;
	count(set_all(sk, &t->o) ? COUNT_LISTEN_FAILED : COUNT_LISTEN);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
