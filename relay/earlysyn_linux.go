package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	hm "halfway/metrics"
)

// Early SYN (Miniproxy's Early SYN Forwarding, KTCP's Early-SYN): for a
// transparent listener with early_syn, the relay opens the next leg when
// the client's SYN arrives rather than when accept returns, so the two
// handshakes overlap and the flow saves a client-leg round trip.
//
// How the SYN is seen: one AF_PACKET socket in the relay's namespace, in
// cooked mode (the IP header first), with a classic BPF filter that passes
// only incoming TCP segments with SYN set and ACK clear, IPv4 (not
// fragments) and IPv6 (TCP as the first header). Chosen over iptables
// NFQUEUE, which saw the SYN as early here (LINUX-FACTS.md): the tap is
// passive — the kernel answers the SYN whether or not the relay reads it,
// so a slow or dead relay delays no handshake and no verdict, and nothing
// needs installing besides the socket — and over eBPF, which would need a
// compiled program for the same filter.
//
// Pairing: the SYN's 4-tuple (client, destination) keys a pending dial;
// accept finds it by the socket's peer and original destination, and only
// for the listener whose capture started it. A retransmitted SYN finds its
// dial pending and starts nothing. Accept also leaves the 4-tuple marked
// as accepted for as long as a dial may wait, so a SYN the sniffer reads
// late (after the accept dialed on its own) or a duplicate arriving after
// the claim starts no second connection. The table is bounded
// (limits.max_early, and limits.max_early_per_client per client address)
// and entries expire when no accept claims them (a SYN flood, or a client
// that gave up): their connections are reset. When the table is full, or
// connects are near max_pending, a SYN is left to the ordinary dial at
// accept. The filter takes only IP packets addressed to this host
// (PACKET_HOST, an IP EtherType, no VLAN tag left), so a frame the
// kernel's IP will not take starts nothing; a SYN that IP takes and then
// drops (a firewall rule, a bad checksum) still does, and its dial expires.

// earlyExpiry is how long a dial started by a SYN waits for its accept.
const earlyExpiry = 3 * time.Second

type earlyDial struct {
	created  time.Time
	listener string         // whose capture started it
	cfg      *Config        // the configuration its dial followed,
	st       *listenerState // and its listener's state (a reload swaps them apart)
	client   netip.Addr
	done     chan struct{}
	conn     *net.TCPConn  // to the server, or
	chain    *pendingChain // to the first relay, the chain's answers pending
	err      error
	claimed  atomic.Bool
	// ctx is the dial's; cancel ends it, with its cause: the flow that
	// claimed it ended first (its client's reset, errClientGone).
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// wait returns the dial's result once it is known. ctx's end ends the
// dial too, so that its slot (max_pending) is given back at once.
func (e *earlyDial) wait(ctx context.Context) (*net.TCPConn, *pendingChain, error) {
	select {
	case <-e.done:
		return e.conn, e.chain, e.err
	case <-ctx.Done():
		e.cancel(context.Cause(ctx))
		go e.abandon()
		return nil, nil, context.Cause(ctx)
	}
}

// abandon ends the dial, and resets its connection once it is known:
// a dial still waiting for a server that does not answer would hold its
// slot (max_pending) until connect_timeout.
func (e *earlyDial) abandon() {
	e.cancel(errDialAbandoned) // a flow's reset that came first stays the cause
	<-e.done
	if e.conn != nil {
		resetConn(e.conn)
	}
	if e.chain != nil {
		resetConn(e.chain.c)
		e.chain.done()
	}
}

type earlyTable struct {
	mu      sync.Mutex
	pending map[[2]netip.AddrPort]*earlyDial
	// accepted holds the 4-tuples of flows accept has taken, with when:
	// a SYN for one of them is late and starts nothing.
	accepted  map[[2]netip.AddrPort]time.Time
	perClient map[netip.Addr]int // pending dials by clientKey
	// listeners with early_syn, swapped by apply.
	listeners atomic.Pointer[[]*listener]
	sniffer   *os.File // nil when no listener wants early SYN
	stopped   chan struct{}
}

// claim takes the dial a SYN from client to dst started for listener, or
// nil; a dial another listener's capture started is reset, and counted in
// dropped (if not nil). Either way the
// 4-tuple is marked accepted while the sniffer runs.
func (t *earlyTable) claim(listener string, client, dst netip.AddrPort, dropped *hm.Counter) *earlyDial {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		return nil // no sniffer
	}
	k := [2]netip.AddrPort{client, dst}
	if len(t.accepted) < maxAcceptedMarks {
		t.accepted[k] = time.Now()
	}
	e := t.pending[k]
	if e == nil {
		return nil
	}
	t.drop(k, e)
	if e.listener != listener {
		if dropped != nil {
			dropped.Inc()
		}
		go e.abandon()
		return nil
	}
	e.claimed.Store(true)
	return e
}

// reserve enters a dial for a SYN from client to dst that listener's
// capture takes, or says why not: retransmission, late, skipped, or ""
// when the sniffer has stopped. room is false when connects are too many
// for one more. cfg is the configuration in force: its limits apply, and
// the dial follows it and st, the listener's state. The dial's context is
// parent's, and ends when the dial's claimer's does (wait).
func (t *earlyTable) reserve(parent context.Context, listener string, st *listenerState, client, dst netip.AddrPort, cfg *Config, room bool) (*earlyDial, string) {
	lim := &cfg.Limits
	k := [2]netip.AddrPort{client, dst}
	ck := clientKey(client.Addr())
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.pending == nil:
		return nil, ""
	case t.pending[k] != nil:
		return nil, "retransmission"
	case !t.accepted[k].IsZero():
		return nil, "late"
	case !room || len(t.pending) >= lim.MaxEarly || t.perClient[ck] >= lim.MaxEarlyPerClient:
		return nil, "skipped"
	}
	e := &earlyDial{created: time.Now(), listener: listener, cfg: cfg, st: st, client: ck, done: make(chan struct{})}
	e.ctx, e.cancel = context.WithCancelCause(parent)
	t.pending[k] = e
	t.perClient[ck]++
	return e, ""
}

// maxAcceptedMarks bounds the accepted marks (about 2 MB at most): a mark
// only saves a needless dial, so past the bound accept leaves none.
const maxAcceptedMarks = 1 << 14

// drop removes a pending dial (under t.mu).
func (t *earlyTable) drop(k [2]netip.AddrPort, e *earlyDial) {
	delete(t.pending, k)
	if n := t.perClient[e.client] - 1; n > 0 {
		t.perClient[e.client] = n
	} else {
		delete(t.perClient, e.client)
	}
}

// applyEarly starts or stops the SYN sniffer as listeners want it (under
// s.mu).
func (s *Server) applyEarly() error {
	var ls []*listener
	for _, l := range s.listeners {
		if l.cfg.Mode != "explicit" && l.cur.Load().cfg.EarlySYN {
			ls = append(ls, l)
		}
	}
	// Where captures overlap, a SYN goes to the first by name; accept
	// on another listener (earlyTakes) resets that dial and dials its own.
	slices.SortFunc(ls, func(a, b *listener) int { return strings.Compare(a.cfg.Name, b.cfg.Name) })
	s.early.listeners.Store(&ls)
	// A listener that stopped early SYN claims nothing any more: its
	// pending dials go now, not at their expiry.
	s.early.dropWhere(func(e *earlyDial) bool {
		return !slices.ContainsFunc(ls, func(l *listener) bool { return l.cfg.Name == e.listener })
	}, s.metrics.early.With("dropped"))
	if s.early.sniffer != nil {
		select {
		case <-s.early.stopped:
			// The sniffer gave up on read errors: a reload opens it
			// anew.
			s.stopEarly()
		default:
		}
	}
	switch {
	case len(ls) > 0 && s.early.sniffer == nil:
		f, err := openSYNSniffer()
		if err != nil {
			return fmt.Errorf("early SYN: %w", err)
		}
		s.startEarly(f)
		s.log.Info("early SYN on", "listeners", len(ls))
	case len(ls) == 0 && s.early.sniffer != nil:
		s.stopEarly()
	}
	return nil
}

// startEarly reads SYNs from f, the sniffer's socket, into a fresh table.
func (s *Server) startEarly(f *os.File) {
	s.early.mu.Lock()
	s.early.pending = map[[2]netip.AddrPort]*earlyDial{}
	s.early.accepted = map[[2]netip.AddrPort]time.Time{}
	s.early.perClient = map[netip.Addr]int{}
	s.early.mu.Unlock()
	s.early.sniffer = f
	s.early.stopped = make(chan struct{})
	go s.sniffSYNs(f, s.early.stopped)
}

// stopEarly closes the sniffer and resets the connections no accept took.
func (s *Server) stopEarly() {
	if s.early.sniffer == nil {
		return
	}
	s.early.sniffer.Close()
	<-s.early.stopped
	s.early.sniffer = nil
	s.early.expire(time.Time{}, s.metrics.early.With("expired"))
	s.early.mu.Lock()
	s.early.pending, s.early.accepted, s.early.perClient = nil, nil, nil
	s.early.mu.Unlock()
}

func (s *Server) sniffSYNs(f *os.File, stopped chan struct{}) {
	defer close(stopped)
	// Unclaimed dials expire on a clock of their own: no further SYN may
	// come to notice them.
	expired, missed := s.metrics.early.With("expired"), s.metrics.early.With("missed")
	defer func() { missed.Add(packetDrops(f)) }() // stopped on read errors: f is still open
	tick := time.NewTicker(earlyExpiry / 4)
	defer tick.Stop()
	quit, ticking := make(chan struct{}), make(chan struct{})
	defer func() { close(quit); <-ticking }()
	go func() {
		defer close(ticking)
		for {
			select {
			case <-quit:
				return
			case now := <-tick.C:
				s.early.expire(now.Add(-earlyExpiry), expired)
				missed.Add(packetDrops(f))
			}
		}
	}()
	buf := make([]byte, 128)
	failures := 0
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// Transient errors are retried a few times; past that the
			// listeners go on without early SYN, and the dials already
			// started expire now rather than wait for a claim.
			s.metrics.errors.With("early_syn_read").Inc()
			if failures++; failures < 10 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			s.log.Error("early SYN: reading SYNs stopped; flows dial at accept until a reload", "err", err)
			s.early.expire(time.Time{}, expired)
			return
		}
		failures = 0
		client, dst, ok := parseSYN(buf[:n])
		if ok {
			s.onSYN(client, dst)
		}
	}
}

// onSYN starts the next leg for a SYN one of the early listeners captures.
func (s *Server) onSYN(client, dst netip.AddrPort) {
	var l *listener
	var st *listenerState
	for _, cand := range *s.early.listeners.Load() {
		cst := cand.cur.Load()
		if cst.captures(dst) {
			l, st = cand, cst
			break
		}
	}
	if l == nil || l.retired.Load() || s.draining.Load() {
		return
	}
	if len(st.policy.clients) > 0 && !st.policy.clientAllowed(client.Addr()) || refuseTransparent(l, st, netip.AddrPort{}, dst) != "" {
		return // accept refuses it, as without early SYN
	}
	rt := s.state.Load()
	// Leave half the connects to the dials of accepted flows. The connect
	// is reserved here, not in the goroutine: SYNs read in a burst would
	// all pass a check of the count before any of their dials began.
	room := s.reserveConnect(rt.tunables.MaxPending / 2)
	e, result := s.early.reserve(s.flowCtx, l.cfg.Name, st, client, dst, rt.cfg, room)
	if e == nil {
		if room {
			s.endConnect()
		}
		if result != "" {
			s.metrics.early.With(result).Inc()
		}
		return
	}
	s.metrics.early.With("dialed").Inc()
	go func() {
		r := rt.match(l.cfg.Name, dst)
		// The flow for spoof_source and PROXY headers; the one accept
		// claims the dial for may end it (wait).
		f := &flow{listener: l.cfg.Name, client: client, connectCtx: e.ctx}
		e.conn, e.chain, e.err = s.connectReserved(rt, st, r, f, dst, nil, false)
		e.cancel(nil)
		close(e.done)
	}()
}

// dropEarly resets the dial a flow's SYN started, if any, for a flow
// refused before it connects (limits, policy) or accepted on a listener
// without early SYN: else its server, or a pooled connection and the far
// relay's onward connect, would wait for the dial's expiry. dst is where
// the flow would go; st is l's state. Where no early-SYN capture takes
// dst (earlyTakes), there is nothing to claim.
func (s *Server) dropEarly(l *listener, st *listenerState, client, dst netip.AddrPort) {
	if !s.earlyTakes(st, dst) {
		return
	}
	if e := s.early.claim(l.cfg.Name, client, dst, s.metrics.early.With("dropped")); e != nil {
		s.dropDial(e)
	}
}

// on tells whether any listener wants early SYN.
func (t *earlyTable) on() bool {
	ls := t.listeners.Load()
	return ls != nil && len(*ls) > 0
}

// earlyTakes tells whether a flow to dst on a listener in state st may
// have had a dial started by its SYN: the listener has early SYN, or an
// early-SYN listener's capture takes dst too. Where captures overlap, the
// SYN's dial is the first early-SYN listener's by name, and the kernel
// may hand the flow to any of them.
func (s *Server) earlyTakes(st *listenerState, dst netip.AddrPort) bool {
	if st.cfg.EarlySYN {
		return true
	}
	if ls := s.early.listeners.Load(); ls != nil {
		for _, l := range *ls {
			if l.cur.Load().captures(dst) {
				return true
			}
		}
	}
	return false
}

// dropDial resets a claimed dial its flow will not use.
func (s *Server) dropDial(e *earlyDial) {
	s.metrics.early.With("dropped").Inc()
	go e.abandon()
}

// expire drops the dials no accept claimed since before; the zero time
// drops them all.
func (t *earlyTable) expire(before time.Time, counter *hm.Counter) {
	t.dropWhere(func(e *earlyDial) bool { return before.IsZero() || e.created.Before(before) }, counter)
	t.mu.Lock()
	for k, at := range t.accepted {
		if before.IsZero() || at.Before(before) {
			delete(t.accepted, k)
		}
	}
	t.mu.Unlock()
}

// dropWhere resets the pending dials drop picks.
func (t *earlyTable) dropWhere(drop func(*earlyDial) bool, counter *hm.Counter) {
	t.mu.Lock()
	var old []*earlyDial
	for k, e := range t.pending {
		if drop(e) {
			old = append(old, e)
			t.drop(k, e)
		}
	}
	t.mu.Unlock()
	counter.Add(uint64(len(old)))
	for _, e := range old {
		go e.abandon()
	}
}

// captures tells whether a transparent listener's capture rules take a
// flow to dst.
func (st *listenerState) captures(dst netip.AddrPort) bool {
	if st.capPorts == nil || !st.capPorts.has(dst.Port()) {
		return false
	}
	if len(st.capDst) == 0 {
		return true
	}
	for _, p := range st.capDst {
		if p.Contains(dst.Addr()) {
			return true
		}
	}
	return false
}

// openSYNSniffer opens the AF_PACKET socket that reads incoming SYNs.
func openSYNSniffer() (*os.File, error) {
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	prog := synFilter()
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching the SYN filter: %w", err)
	}
	// Room for a burst of SYNs while the reader waits for a CPU: each
	// queued SYN holds its whole skb, so the default
	// (net.core.rmem_default, about 200 KiB) holds a burst of some
	// hundreds. Where the relay may not force it, the default stays; the
	// SYNs dropped are counted (missed).
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sniffBuffer/2) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, sniffBuffer/2)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("PACKET_IGNORE_OUTGOING: %w", err)
	}
	// Bind to all devices only now: a SYN read before is a SYN the
	// filter had not judged.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding the AF_PACKET socket: %w", err)
	}
	return os.NewFile(uintptr(fd), "syn-sniffer"), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sniffBuffer is the sniffer socket's receive buffer.
const sniffBuffer = 4 << 20

// packetDrops is how many frames the filter passed that the sniffer's
// socket dropped (its buffer full) since the last call: their SYNs start
// no dial, and their flows dial at accept.
func packetDrops(f *os.File) uint64 {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0
	}
	var drops uint64
	_ = rc.Control(func(fd uintptr) {
		if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			drops = uint64(st.Drops)
		}
	})
	return drops
}

// Classic BPF ancillary loads, SKF_AD_OFF (-0x1000) plus SKF_AD_PROTOCOL
// (0), SKF_AD_PKTTYPE (4) and SKF_AD_VLAN_TAG (44) from linux/filter.h
// (not in x/sys/unix): skb->protocol (the EtherType, host order),
// skb->pkt_type, and the VLAN tag the core took off the frame.
const (
	skfAdProtocol = 0xfffff000 + 0
	skfAdPktType  = 0xfffff000 + 4
	skfAdVLANTag  = 0xfffff000 + 44
)

// synFilter passes IPv4 and IPv6 TCP segments addressed to this host with
// SYN and not ACK, cut to their first 128 bytes; the packet starts at the
// IP header.
//
// The tap runs before the kernel's IP has seen the frame, so the filter
// checks what decides whether IP takes it as this host's: an IP EtherType
// (the bytes of other frames may read as a SYN), and no VLAN tag but a
// priority tag (VLAN 0). The core strips a tag before the tap; a frame for
// a VLAN without a device here is then dropped, and one for a VLAN device
// comes by the tap again on that device, its tag cleared (vlan_do_receive;
// this machine's kernel has no 8021q module to show it).
func synFilter() []unix.SockFilter {
	const (
		ldw  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ldb  = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldh  = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldbx = unix.BPF_LD | unix.BPF_B | unix.BPF_IND
		msh  = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
		and  = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
		syn  = 0x02
		ack  = 0x10
	)
	const v4, v6, accept, drop = 8, 19, 27, 28
	// to is a jump offset from instruction i to target.
	to := func(i, target int) uint8 { return uint8(target - i - 1) }
	return []unix.SockFilter{
		// The skb's packet type: PACKET_HOST only.
		/* 0 */ {Code: ldw, K: skfAdPktType},
		/* 1 */ {Code: jeq, K: unix.PACKET_HOST, Jf: to(1, drop)},
		// No VLAN tag left, or a priority tag.
		/* 2 */ {Code: ldw, K: skfAdVLANTag},
		/* 3 */ {Code: and, K: 0x0fff},
		/* 4 */ {Code: jeq, K: 0, Jf: to(4, drop)},
		/* 5 */ {Code: ldw, K: skfAdProtocol},
		/* 6 */ {Code: jeq, K: unix.ETH_P_IP, Jt: to(6, v4)},
		/* 7 */ {Code: jeq, K: unix.ETH_P_IPV6, Jt: to(7, v6), Jf: to(7, drop)},
		// IPv4
		/* 8 */ {Code: ldb, K: 0},
		/* 9 */ {Code: and, K: 0xf0},
		/* 10 */ {Code: jeq, K: 0x40, Jf: to(10, drop)},
		/* 11 */ {Code: ldb, K: 9},
		/* 12 */ {Code: jeq, K: unix.IPPROTO_TCP, Jf: to(12, drop)},
		/* 13 */ {Code: ldh, K: 6},
		/* 14 */ {Code: jset, K: 0x1fff, Jt: to(14, drop)}, // not the first fragment
		/* 15 */ {Code: msh, K: 0}, // X = IP header length
		/* 16 */ {Code: ldbx, K: 13}, // TCP flags
		/* 17 */ {Code: and, K: syn | ack},
		/* 18 */ {Code: jeq, K: syn, Jt: to(18, accept), Jf: to(18, drop)},
		// IPv6, TCP as the first next header
		/* 19 */ {Code: ldb, K: 0},
		/* 20 */ {Code: and, K: 0xf0},
		/* 21 */ {Code: jeq, K: 0x60, Jf: to(21, drop)},
		/* 22 */ {Code: ldb, K: 6},
		/* 23 */ {Code: jeq, K: unix.IPPROTO_TCP, Jf: to(23, drop)},
		/* 24 */ {Code: ldb, K: 40 + 13},
		/* 25 */ {Code: and, K: syn | ack},
		/* 26 */ {Code: jeq, K: syn, Jt: to(26, accept), Jf: to(26, drop)},
		/* 27 */ {Code: ret, K: 128},
		/* 28 */ {Code: ret, K: 0},
	}
}

// parseSYN reads the addresses of a SYN the filter passed.
func parseSYN(b []byte) (client, dst netip.AddrPort, ok bool) {
	if len(b) < 1 {
		return
	}
	switch b[0] >> 4 {
	case 4:
		hl := int(b[0]&0x0f) * 4
		if hl < 20 || len(b) < hl+4 {
			return
		}
		src, _ := netip.AddrFromSlice(b[12:16])
		d, _ := netip.AddrFromSlice(b[16:20])
		return netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[hl:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(b[hl+2:])), true
	case 6:
		if len(b) < 44 {
			return
		}
		src, _ := netip.AddrFromSlice(b[8:24])
		if src.Is4In6() {
			// IPv6 drops it (ip6_rcv_core); unmapped, it would pass for
			// an IPv4 client in allow_clients and spoof_source.
			return
		}
		d, _ := netip.AddrFromSlice(b[24:40])
		if src.IsLinkLocalUnicast() || d.IsLinkLocalUnicast() {
			// Its flow's addresses carry the zone of the interface the
			// SYN came in on, which a read of this socket does not: a
			// dial would fail without it (EINVAL) and no accept would
			// claim it. Such flows dial at accept.
			return
		}
		return netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[40:])), netip.AddrPortFrom(d.Unmap(), binary.BigEndian.Uint16(b[42:])), true
	}
	return
}
