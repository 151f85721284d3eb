// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The sockmap data path: an sk_skb verdict program that moves each segment
// a relayed socket receives straight to the send side of its flow's other
// socket, so the bytes never reach user space.
//
// socks maps a socket's cookie to the other socket of its flow. dirs holds
// one entry per direction, keyed by the source socket's cookie.
//
// The redirect path has no backpressure of its own: the source's window
// reopens as soon as a segment is redirected. So a direction whose
// destination falls more than backlog_max bytes behind is held: its
// segments are passed to its own socket's receive side, which fills, and
// where the relay reads them and writes them on with the destination's
// flow control. Once the relay has written every byte passed to it, it
// asks (resume) to go back to the kernel, and the next segment finds
// whether nothing was passed in between: if so the direction redirects
// again, else it stays held and the relay reads on. A direction is also
// held if its peer is missing from socks. Bytes therefore stay in order:
// no segment is redirected while one passed before it is unwritten.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Only the field read here; CO-RE relocates it against the running kernel.
struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct dir {
	__u64 redirected; // bytes redirected to the peer, in all
	__u64 passed;     // bytes passed to user space while held, in all
	__u64 mark;       // redirected when base was taken
	__u32 base;       // the peer's write_seq when redirecting (re)started
	__u32 state;      // DIR_*
};

enum {
	DIR_RUN = 0,   // redirecting
	DIR_HELD = 1,  // passing to user space
	DIR_START = 2, // take base at the next segment, then redirect
};

// The most bytes a direction may have redirected and not yet seen written
// to its destination socket. Set at load time.
volatile const __u32 backlog_max = 4 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2); // resized at load time
	__type(key, __u64);
	__type(value, __u64);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2); // resized at load time
	__type(key, __u64);
	__type(value, struct dir);
} dirs SEC(".maps");

// resume holds, per held direction, the bytes passed to user space that
// the relay has written on: the direction redirects again if that is all
// of them. Only user space writes it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2); // resized at load time
	__type(key, __u64);
	__type(value, __u64);
} resume SEC(".maps");

static __always_inline int hold(struct dir *d, struct __sk_buff *skb)
{
	d->state = DIR_HELD;
	d->passed += skb->len;
	return SK_PASS;
}

SEC("sk_skb/verdict")
int halfway_redirect(struct __sk_buff *skb)
{
	// A segment with no bytes (a bare FIN) has nothing to move, and sent
	// on after the relay has passed the FIN on, it would fail the peer.
	if (skb->len == 0)
		return SK_DROP;

	__u64 cookie = bpf_get_socket_cookie(skb);
	struct dir *d = bpf_map_lookup_elem(&dirs, &cookie);
	if (!d)
		return SK_PASS;
	if (d->state == DIR_HELD) {
		__u64 *written = bpf_map_lookup_elem(&resume, &cookie);
		if (!written || *written != d->passed)
			return hold(d, skb);
		d->state = DIR_START;
	}

	struct bpf_sock *peer = bpf_map_lookup_elem(&socks, &cookie);
	if (!peer)
		return hold(d, skb);
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(peer);
	__u32 seq = tp ? tp->write_seq : 0;
	bpf_sk_release(peer);
	if (!tp)
		return hold(d, skb);
	if (d->state == DIR_START) {
		d->base = seq;
		d->mark = d->redirected;
		d->state = DIR_RUN;
	}
	// Bytes redirected since base, less those written to the peer since.
	if ((__u32)(d->redirected - d->mark) - (seq - d->base) > backlog_max)
		return hold(d, skb);
	d->redirected += skb->len;
	return bpf_sk_redirect_hash(skb, &socks, &cookie, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
