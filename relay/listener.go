package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"halfway/sockopt"
)

// fastOpenQueue is the TFO backlog of listeners that accept relay hops.
const fastOpenQueue = 4096

type listener struct {
	cfg ListenerConfig // the fields that need a new socket: Name, Listen, Mode, MPTCP, Capture
	ln  *net.TCPListener
	// acceptFile is a duplicate of ln's descriptor, for a listener that
	// is not explicit, from which plain flows are accepted (see
	// plain_linux.go): a net listener hands out connections only. nil: none.
	acceptFile *os.File
	closing    atomic.Bool // closeSocket has run
	cur        atomic.Pointer[listenerState]
	uncapture  func() error // removes installed capture rules, or nil
	// subflowOpts are what an MPTCP listener's subflow was given
	// (applySubflows; nil: nothing). Under the Server's mu.
	subflowOpts *sockopt.SubflowOptions
	// inherited: the socket is one a service manager passed (Inherit),
	// at this address; it outlives the listener.
	inherited netip.AddrPort
	// tcpOnly: configured mptcp, but the kernel gave a TCP socket (Go
	// falls back when MPTCP is off, net.mptcp.enabled=0): its state says
	// no MPTCP, so a converter does not advertise it.
	tcpOnly bool

	// A closed listener's capture rules stay while its flows last: they
	// carry those flows' packets.
	flows   atomic.Int64
	retired atomic.Bool

	// rcvbuf is the receive buffer set on the listening socket (0: none,
	// autotuned), which its connections take during their handshake
	// (acceptedReceiveBuffer).
	rcvbuf int

	// nodelay: the listening socket has TCP_NODELAY, which Linux copies
	// to every connection it accepts: plain flows need no setsockopt.
	nodelay bool

	// keepalive is what the listening socket has set, and so every
	// connection it accepts (Linux copies it): accepts whose leg wants the
	// same need no setsockopt. -1: unknown.
	keepalive atomic.Int64
}

// setReceiveBuffer fixes the listening socket's receive buffer at n (> 0),
// for the connections it accepts from now on (acceptedReceiveBuffer).
func (l *listener) setReceiveBuffer(n int) error {
	if err := sockopt.Tune(l.ln, "", 0, n, false); err != nil {
		return err
	}
	l.rcvbuf = n
	return nil
}

// setKeepalive puts the client leg's keepalive on the listening socket.
func (l *listener) setKeepalive(d time.Duration) {
	if sockopt.SetListenerKeepalive(l.ln, d, keepaliveProbes) == nil {
		l.keepalive.Store(int64(d))
	} else {
		l.keepalive.Store(-1)
	}
}

// listenerState is what Reload may change without a new socket.
type listenerState struct {
	cfg    ListenerConfig
	policy *policy
	users  map[string]string
	protos map[string]bool
	// What the capture rules take, for early SYN: ports and prefixes
	// (without capture dst, the listener's whole address family).
	capPorts portSet
	capDst   []netip.Prefix
	forward  netip.AddrPort // a forward listener's destination, unmapped
	plain    bool           // its flows can be plain (see plain_linux.go)
}

func newListenerState(lc ListenerConfig, own *atomic.Pointer[ownSet]) (*listenerState, error) {
	st := &listenerState{cfg: lc, protos: map[string]bool{}, plain: plainListener(&lc)}
	var err error
	if st.policy, err = newPolicy(&lc, own); err != nil {
		return nil, err
	}
	if lc.UsersFile != "" {
		if st.users, err = loadUsers(lc.UsersFile); err != nil {
			return nil, err
		}
	}
	for _, p := range lc.Protocols {
		st.protos[p] = true
	}
	if lc.Mode == "forward" {
		ap, err := netip.ParseAddrPort(lc.ForwardTo)
		if err != nil {
			return nil, err
		}
		st.forward = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if c := lc.Capture; c != nil {
		if st.capPorts, err = parsePorts(c.Ports); err != nil {
			return nil, err
		}
		for _, d := range c.Dst {
			p, err := netip.ParsePrefix(d)
			if err != nil {
				return nil, err
			}
			st.capDst = append(st.capDst, p.Masked())
		}
		if len(st.capDst) == 0 {
			// The rules take the listener's family only (nftRules): a SYN
			// of the other one to a captured port is not the listener's.
			ap, err := netip.ParseAddrPort(lc.Listen)
			if err != nil {
				return nil, err
			}
			all := netip.IPv6Unspecified()
			if ap.Addr().Is4() {
				all = netip.IPv4Unspecified()
			}
			st.capDst = []netip.Prefix{netip.PrefixFrom(all, 0)}
		}
	}
	return st, nil
}

// perClientExempt: a listener that takes only authenticated relay hops sees
// every flow come from the previous relay's one address, so the per-client
// limit would cap a whole chain.
func (st *listenerState) perClientExempt() bool {
	return len(st.protos) == 1 && st.protos["convert"]
}

// acceptedReceiveBuffer is the receive buffer to set on the listening
// socket of a listener configured as lc: the receive_buffer of the leg its
// connections are. A connection takes its window scale from the listening
// socket's buffer in its handshake, before the relay can set its own, and
// keeps it: with a larger buffer set only after accept, its window stops
// at 64 KiB times that scale (8 MiB with net.ipv4.tcp_rmem's maximum at
// 6 MiB, a common default). 0 (nothing set) where the leg has no fixed
// buffer, on MPTCP listeners, and where one listener takes both client and
// relay legs (SOCKS5 or HTTP and Convert) whose buffers differ: the
// accepted sockets would inherit the buffer, and a leg without one would
// lose autotuning.
func acceptedReceiveBuffer(cfg *Config, lc ListenerConfig) int {
	if lc.MPTCP {
		return 0
	}
	relay, client := false, lc.Mode != "explicit"
	for _, p := range lc.Protocols {
		if p == "convert" {
			relay = true
		} else {
			client = true
		}
	}
	switch {
	case relay && client && cfg.Legs.Relay.ReceiveBuffer != cfg.Legs.Client.ReceiveBuffer:
		return 0
	case relay && !client:
		return int(cfg.Legs.Relay.ReceiveBuffer)
	}
	return int(cfg.Legs.Client.ReceiveBuffer)
}

// openListener opens a listener configured as lc, by cfg, the
// configuration about to apply (its client leg's keepalive).
func (s *Server) openListener(lc ListenerConfig, cfg *Config) (*listener, error) {
	st, err := newListenerState(lc, &s.own)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
	}
	opts := sockopt.Options{}
	switch {
	case lc.Mode == "tproxy":
		opts.Transparent = true
	case st.protos["convert"]:
		opts.FastOpenQueue = fastOpenQueue
	}
	opts.ReceiveBuffer = acceptedReceiveBuffer(cfg, lc)
	lcfg := net.ListenConfig{Control: opts.Control, KeepAlive: -1}
	// MPTCP only where configured: Go would otherwise pick it by default.
	lcfg.SetMultipathTCP(lc.MPTCP)
	ap, _ := netip.ParseAddrPort(lc.Listen)
	network := "tcp4"
	if ap.Addr().Is6() {
		network = "tcp6"
	}
	// A socket the service manager passed at this address serves it.
	tl, err := s.listenInherited(&lc, ap, opts.Transparent, opts.FastOpenQueue, opts.ReceiveBuffer)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
	}
	if tl == nil {
		nl, err := lcfg.Listen(context.Background(), network, lc.Listen)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		tl = nl.(*net.TCPListener)
	}
	l := &listener{cfg: lc, ln: tl, rcvbuf: opts.ReceiveBuffer}
	if _, ok := s.inherited[ap]; ok {
		// The socket's listening subflow keeps what an earlier listener
		// of this process gave it: a reload that wants none resets it.
		l.inherited, l.subflowOpts = ap, s.inheritedSubflows[ap]
	}
	if lc.MPTCP && !listensMPTCP(l.ln) {
		l.tcpOnly, st.cfg.MPTCP = true, false
		s.log.Warn("mptcp: the kernel gave a TCP socket (is net.mptcp.enabled 0?): this listener takes TCP only", "listener", lc.Name)
	}
	l.cur.Store(st)
	if !l.acceptsMPTCP() {
		l.nodelay = setNoDelay(l.ln) == nil
	}
	if lc.Mode != "explicit" {
		if l.acceptFile, err = acceptFileOf(l.ln); err != nil {
			s.log.Warn("plain flows off: their accepts need a duplicate of the listening socket", "listener", lc.Name, "err", err)
		}
	}
	l.setKeepalive(cfg.Legs.Client.Keepalive.D())
	if lc.Capture != nil && lc.Capture.Install {
		// A removed listener of this name (or one that maps to the same
		// table) may still hold the table for its last flows: the table is
		// rebuilt now, and shared with it until the last of both goes.
		delete(s.retired, captureTable(lc.Name))
		if l.uncapture, err = installCapture(&lc, &s.routes); err != nil {
			l.closeSocket()
			return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		s.log.Info("capture rules installed", "listener", lc.Name, "table", captureTable(lc.Name))
	}
	s.log.Info("listening", "listener", lc.Name, "addr", tl.Addr().String(), "mode", lc.Mode, "protocols", lc.Protocols, "inherited", l.inherited.IsValid())
	if lc.MPTCP && lc.Mode == "tproxy" && lc.Capture != nil && strings.TrimSpace(lc.Capture.Ports) != strconv.Itoa(int(ap.Port())) {
		// The kernel takes a subflow join only on a listener with the
		// connection's port (MPTcpExtMismatchPortSynRx counts the others):
		// MPTCP clients still work, on their first subflow alone.
		s.log.Warn("MPTCP clients get one subflow: TPROXY listeners take joins only for their own port; listen on the captured port",
			"listener", lc.Name, "listen_port", ap.Port(), "captured_ports", lc.Capture.Ports)
	}
	return l, nil
}

// acceptsMPTCP tells whether the listener takes MPTCP clients: configured
// so, and given an MPTCP socket by the kernel.
func (l *listener) acceptsMPTCP() bool { return l.cfg.MPTCP && !l.tcpOnly }

// closeSocket closes the listening socket.
func (l *listener) closeSocket() {
	l.closing.Store(true)
	l.ln.Close()
	if l.acceptFile != nil {
		l.acceptFile.Close()
	}
}

// close stops accepting; capture rules go when the last flow has ended.
func (l *listener) close() error {
	l.closeSocket()
	l.retired.Store(true)
	if l.flows.Load() == 0 && l.uncapture != nil {
		return l.uncapture()
	}
	return nil
}

// closeNow stops accepting and removes the capture rules at once.
func (l *listener) closeNow() error {
	l.closeSocket()
	l.retired.Store(true)
	if l.uncapture != nil {
		return l.uncapture() // idempotent: a later flowEnded finds it done
	}
	return nil
}

// flowStarted and flowEnded count a listener's flows; flowEnded reports
// the last flow of a closed listener, whose capture rules go then.
//
// flowStarted is false for a flow accepted as l closed: its capture rules
// may be gone already (close saw no flow), and the flow must not run; it
// is still counted, and its flowEnded takes the rules away if they stay.
func (l *listener) flowStarted() bool {
	l.flows.Add(1)
	return !(l.retired.Load() && l.uncapture != nil)
}

func (l *listener) flowEnded() bool {
	return l.flows.Add(-1) == 0 && l.retired.Load() && l.uncapture != nil
}

// acceptWarnEvery spaces the warnings of a listener whose accepts fail:
// out of descriptors, a relay can fail thousands of times a second.
const acceptWarnEvery = 5 * time.Second

func (s *Server) acceptLoop(l *listener) {
	var backoff time.Duration
	var warned time.Time
	failed := 0 // failures since the last warning
	var rc syscall.RawConn
	rcErr := errors.New("no accept file")
	if l.acceptFile != nil {
		rc, rcErr = l.acceptFile.SyscallConn()
	}
	for {
		a := accepted{l: l, fd: -1}
		var err error
		if rcErr == nil && s.plain(l) {
			a.fd, a.peer, err = acceptFD(rc)
		} else {
			a.c, err = l.ln.AcceptTCP()
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.closing.Load() {
				return
			}
			// Out of descriptors or memory: wait, and let flows finish.
			s.metrics.errors.With("accept").Inc()
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if failed++; time.Since(warned) >= acceptWarnEvery {
				s.log.Warn("accept failed", "listener", l.cfg.Name, "err", err, "retry_in", backoff, "failures", failed)
				warned, failed = time.Now(), 0
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		select {
		case s.work <- a:
		default:
			go s.worker(a)
		}
	}
}

// accepted is a connection handed to a worker: c, or for a plain flow
// (see plain_linux.go) its descriptor and peer.
type accepted struct {
	l    *listener
	c    *net.TCPConn
	fd   int
	peer netip.AddrPort
}

// serve serves an accepted connection.
func (a *accepted) serve(s *Server) {
	if a.c != nil {
		s.serve(a.l, a.c)
	} else {
		s.servePlain(a.l, a.fd, a.peer)
	}
}

// Workers: a goroutine that has served a connection waits a little for
// the next, so that a busy relay does not start a goroutine and grow its
// stack (serving runs deep, through the dial) for every connection.
const (
	workerIdle     = time.Second // how long an idle worker waits
	maxIdleWorkers = 64          // more idle ones than this end at once
)

// worker serves a, then what the accept loops hand it, until a period
// of workerIdle has passed in which it served nothing (so it ends after
// one to two periods idle). The timer runs on between connections: a
// busy worker does not reset it for each.
func (s *Server) worker(a accepted) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		a.serve(s)
		if s.idleWorkers.Add(1) > maxIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		var ok bool
		a, ok = s.nextWork(t)
		s.idleWorkers.Add(-1)
		if !ok {
			return
		}
	}
}

// nextWork waits for the next connection an idle worker is handed; false
// once a whole period of t has passed without one (the period running
// when it starts counts as busy), or the relay stops.
func (s *Server) nextWork(t *time.Timer) (accepted, bool) {
	served := true // the worker has just served a connection
	for {
		select {
		case a := <-s.work:
			return a, true
		case <-t.C:
			if !served {
				return accepted{}, false
			}
			served = false
			t.Reset(workerIdle)
		case <-s.flowCtx.Done():
			return accepted{}, false
		}
	}
}
