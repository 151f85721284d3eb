package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"halfway/datapath"
	"halfway/socks5"
)

// poolPair runs, in this process on loopback, a converter relay "rs" on a
// fixed port and an entry relay "rc" whose SOCKS5 flows go via rs from a
// pool. peerAddr is where rc dials rs (rs itself, or a proxy before it).
type poolPair struct {
	rsYAML, rcYAML string
	rsAddr         string
}

func newPoolPair(t *testing.T, peerAddr func(rs string) string, low, high int) *poolPair {
	t.Helper()
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("pool test key 0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := freeLoopback(t)
	peer := peerAddr(rs)
	return &poolPair{
		rsAddr: rs,
		rsYAML: fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q, advertise: [%q]}
listeners:
  - {name: hop, listen: %q, protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, psk, peer, rs),
		rcYAML: fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
routes:
  - {via: [%q]}
peers:
  - {address: %q, pool: {low: %d, high: %d}}
`, psk, peer, peer, low, high),
	}
}

// freeLoopback is a loopback address with a port free right now.
func freeLoopback(t *testing.T) string {
	t.Helper()
	// Below the ephemeral range, which the kernel never gives an outgoing
	// connection's socket: between this check and the test's listen,
	// only another test's listener could take the port (at random, hardly
	// the same). A port from the range, as port 0 gives, could become the
	// local port of any connection on the machine meanwhile.
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &low)
	}
	for range 100 {
		port := 0
		if low > 11000 {
			port = 10000 + mrand.IntN(low-10000)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return l.Addr().String()
	}
	t.Fatal("no free loopback port")
	return ""
}

// echoServer answers each connection with what it receives, until EOF.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return addrPortOf(l.Addr())
}

// echoThrough sends n random bytes through the SOCKS relay at socks to
// the echo server at dst and checks they come back whole.
func echoThrough(socks net.Addr, dst netip.AddrPort, n int) error {
	c, err := net.DialTimeout("tcp", socks.String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		return fmt.Errorf("socks: %w", err)
	}
	data := make([]byte, n)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo: got %d bytes, want %d equal ones", len(got), n)
	}
	return nil
}

// parkedOf is how many pooled connections s holds parked.
func parkedOf(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.parked)
}

func poolOf(t *testing.T, s *Server) PoolStatus {
	t.Helper()
	ps := s.Pools()
	if len(ps) != 1 {
		t.Fatalf("pools: %+v, want one", ps)
	}
	return ps[0]
}

// TestPoolFlows: the pool fills to its high watermark with greeted
// connections the peer holds as "pooled"; flows take them, each bytes-exact
// in both directions with half-close, and the pool refills behind them.
func TestPoolFlows(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 3, 6)
	rs := startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	dst := echoServer(t)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 6 })
	pooled := 0
	for _, f := range rs.Flows() {
		if f.Protocol == "pooled" {
			pooled++
		}
	}
	if pooled != 6 {
		t.Errorf("the peer holds %d pooled connections, want 6: %+v", pooled, rs.Flows())
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoThrough(rc.Addr("socks"), dst, 1+i*37_000); err != nil {
				failed.Add(1)
				t.Errorf("flow %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	st := poolOf(t, rc)
	if st.Taken == 0 || st.Taken+st.Missed < 20 {
		t.Errorf("pool after 20 flows: %+v, want some taken, and every flow counted", st)
	}
	waitFor(t, func() bool { return poolOf(t, rc).Idle >= 3 })
}

// TestPoolPeerRestart: when the peer stops, its pooled connections close
// and the pool finds them dead; flows meanwhile get a clean refusal; when
// the peer is back, the pool refills and flows take pooled connections.
func TestPoolPeerRestart(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 2, 4)
	_, stopRS := startStoppable(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	dst := echoServer(t)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 4 })
	stopRS()
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 0 })
	if st := poolOf(t, rc); st.Dead < 4 {
		t.Errorf("after the peer stopped: %+v, want its 4 connections found dead", st)
	}
	c, err := net.Dial("tcp", rc.Addr("socks").String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", "")
	c.Close()
	if err == nil {
		t.Error("a flow via a stopped peer was accepted")
	}
	taken := poolOf(t, rc).Taken
	startLoopback(t, pp.rsYAML)
	// The pool backs off after failures (at most 10 s) before it refills.
	for i := 0; poolOf(t, rc).Idle < 2; i++ {
		if i > 300 {
			t.Fatalf("pool never refilled: %+v", poolOf(t, rc))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := echoThrough(rc.Addr("socks"), dst, 100_000); err != nil {
		t.Fatal(err)
	}
	if st := poolOf(t, rc); st.Taken != taken+1 {
		t.Errorf("after the peer came back: %+v, want one more taken", st)
	}
}

// breakable forwards connections to a target until broken: then every
// connection open so far loses its far side, and its near side answers
// the next bytes sent to it with a reset and acknowledges none of them,
// as the kernel of a peer that restarted and forgot the connection would.
// Connections opened later are forwarded again.
//
// The near side does not read the bytes and then reset: its kernel would
// acknowledge them first whenever the reset came late (the delayed-ACK
// timer fires while the test's goroutine waits for a CPU), and a relay
// that saw its bytes acknowledged rightly may not send them again. A
// socket filter drops them instead, before TCP sees them, and the reset
// follows the first one dropped.
type breakable struct {
	ln     net.Listener
	target string
	done   chan struct{} // closed when the test ends
	mu     sync.Mutex
	links  []breakableLink       // the connections open so far
	broken map[*net.TCPConn]bool // by far side
}

type breakableLink struct{ near, far *net.TCPConn }

func newBreakable(t *testing.T, addr, target string) *breakable {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &breakable{ln: ln, target: target, done: make(chan struct{}), broken: map[*net.TCPConn]bool{}}
	t.Cleanup(func() { ln.Close(); close(b.done) })
	go acceptEach(ln, func(c net.Conn) { b.forward(c.(*net.TCPConn)) })
	return b
}

func (b *breakable) isBroken(far *net.TCPConn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.broken[far]
}

func (b *breakable) forward(near *net.TCPConn) {
	defer near.Close()
	c, err := net.Dial("tcp", b.target)
	if err != nil {
		return
	}
	far := c.(*net.TCPConn)
	b.mu.Lock()
	b.links = append(b.links, breakableLink{near, far})
	b.mu.Unlock()
	back := make(chan struct{})
	defer func() { <-back }() // before near closes
	go func() {
		defer close(back)
		io.Copy(near, far)
		if !b.isBroken(far) {
			near.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := near.Read(buf)
		if b.isBroken(far) {
			// Reset by resetOnBytes, or bytes that came before the break,
			// or the end of the stream.
			near.SetLinger(0)
			near.Close()
			return
		}
		if n > 0 {
			far.Write(buf[:n])
		}
		if err != nil {
			far.CloseWrite()
			return
		}
	}
}

func (b *breakable) breakAll(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.links {
		b.broken[l.far] = true
		if err := dropBytes(l.near); err != nil {
			t.Fatalf("break a connection: %v", err)
		}
		l.far.Close()
		go b.resetOnBytes(l.near)
	}
}

// resetOnBytes resets c once its filter dropped a segment, or gives up
// when c closes or the test ends.
func (b *breakable) resetOnBytes(c *net.TCPConn) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		n, err := droppedOf(c)
		if err != nil {
			return // closed
		}
		if n > 0 {
			c.SetLinger(0)
			c.Close()
			return
		}
		select {
		case <-b.done:
			return
		case <-tick.C:
		}
	}
}

// dropBytes has the kernel drop every segment to c that carries bytes,
// before TCP sees (and acknowledges) them; others (a FIN, an ACK, a
// keepalive probe) pass.
func dropBytes(c *net.TCPConn) error {
	const (
		ldb  = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldl  = unix.BPF_LD | unix.BPF_W | unix.BPF_LEN
		and  = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
		rsh  = unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K
		tax  = unix.BPF_MISC | unix.BPF_TAX
		jgtx = unix.BPF_JMP | unix.BPF_JGT | unix.BPF_X
		ret  = unix.BPF_RET | unix.BPF_K
	)
	// A TCP socket's filter sees the segment from its TCP header on.
	prog := []unix.SockFilter{
		{Code: ldb, K: 12},          // data offset, in the high nibble
		{Code: and, K: 0xf0},        //
		{Code: rsh, K: 2},           // header length in bytes
		{Code: tax},                 //
		{Code: ldl},                 // segment length
		{Code: jgtx, Jt: 0, Jf: 1},  // longer than its header:
		{Code: ret, K: 0},           // drop
		{Code: ret, K: 0xffff_ffff}, // else keep
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("attach the filter: %w", serr)
	}
	return nil
}

// droppedOf is how many segments to c the kernel dropped (SO_MEMINFO).
func droppedOf(c *net.TCPConn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var mem [unix.SK_MEMINFO_VARS]uint32
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(mem))
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO, uintptr(unsafe.Pointer(&mem)), uintptr(unsafe.Pointer(&size)), 0)
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, fmt.Errorf("SO_MEMINFO: %w", errno)
	}
	return mem[unix.SK_MEMINFO_DROPS], nil
}

// TestPoolDeadOnUse: a pooled connection that looks alive but is answered
// with a reset costs the flow nothing: its bytes go again on a fresh
// connection and arrive once.
func TestPoolDeadOnUse(t *testing.T) {
	var proxy *breakable
	proxyAddr := freeLoopback(t)
	pp := newPoolPair(t, func(string) string { return proxyAddr }, 2, 2)
	startLoopback(t, pp.rsYAML)
	proxy = newBreakable(t, proxyAddr, pp.rsAddr)
	rc := startLoopback(t, pp.rcYAML)
	dst := echoServer(t)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 2 })
	proxy.breakAll(t)
	for i := range 2 {
		if err := echoThrough(rc.Addr("socks"), dst, 50_000+i); err != nil {
			t.Fatalf("flow %d on a broken pooled connection: %v", i, err)
		}
	}
	if st := poolOf(t, rc); st.Dead < 2 || st.Taken < 2 {
		t.Errorf("pool: %+v, want 2 taken and found dead", st)
	}
}

// TestSettleDeadPooled: a transparent flow sends the client's first bytes
// on a pooled connection before the chain answers; when that connection
// turns out dead, the bytes go again on a fresh one, and the client's
// stream arrives once and whole.
func TestSettleDeadPooled(t *testing.T) {
	proxyAddr := freeLoopback(t)
	pp := newPoolPair(t, func(string) string { return proxyAddr }, 1, 1)
	startLoopback(t, pp.rsYAML)
	proxy := newBreakable(t, proxyAddr, pp.rsAddr)
	rc := startLoopback(t, pp.rcYAML)
	dst := echoServer(t)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 1 })
	proxy.breakAll(t)

	// A client connection, as accept would return it, with bytes waiting.
	cli, acc := acceptedPair(t)
	data := make([]byte, 30_000)
	rand.Read(data)
	if _, err := cli.Write(data); err != nil {
		t.Fatal(err)
	}
	cli.(*net.TCPConn).CloseWrite()

	rt := rc.state.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := rc.openChain(ctx, rt, &route{via: []netip.AddrPort{netip.MustParseAddrPort(proxyAddr)}}, dst, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if pc.pool == nil {
		t.Fatal("the flow did not take the pooled connection")
	}
	relayConn, err := rc.settle(rt, pc, acc, &flow{})
	if err != nil {
		// The broken peer acknowledged none of the bytes: they go again.
		t.Fatalf("settle: %v, want the bytes sent again on a fresh connection", err)
	}
	go datapath.Join(ctx, acc, relayConn, datapath.Options{})
	cli.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(cli)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("echo: %d bytes, %v; want the %d sent, once", len(got), err, len(data))
	}
	if st := poolOf(t, rc); st.Dead < 1 {
		t.Errorf("pool: %+v, want the dead connection counted", st)
	}
}

// TestPoolTunables: pool watermarks change at run time through the admin
// API; the pool follows at once; bad values and unknown peers are refused.
func TestPoolTunables(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 4, 6)
	startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, strings.Replace(pp.rcYAML, "admin: {listen: off}", `admin: {listen: "127.0.0.1:0"}`, 1))
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 6 })
	rsAP := netip.MustParseAddrPort(pp.rsAddr)
	mapped := netip.AddrPortFrom(netip.AddrFrom16(rsAP.Addr().As16()), rsAP.Port()).String() // [::ffff:127.0.0.1]:N
	put := func(body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, "http://"+rc.AdminAddr().String()+"/api/tunables", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, bad := range []string{
		`{"pools": {"127.0.0.1:1": {"low": 1, "high": 2}}}`,
		fmt.Sprintf(`{"pools": {%q: {"low": 3, "high": 2}}}`, pp.rsAddr),
		fmt.Sprintf(`{"pools": {%q: {"low": 1, "high": 5000}}}`, pp.rsAddr),
		// Two spellings of one peer.
		fmt.Sprintf(`{"pools": {%q: {"low": 1, "high": 2}, %q: {"low": 2, "high": 3}}}`, pp.rsAddr, mapped),
	} {
		if code := put(bad); code != http.StatusBadRequest {
			t.Errorf("PUT %s: %d, want 400", bad, code)
		}
	}
	if code := put(fmt.Sprintf(`{"pools": {%q: {"low": 1, "high": 2}}}`, pp.rsAddr)); code != http.StatusOK {
		t.Fatalf("PUT: %d", code)
	}
	waitFor(t, func() bool { st := poolOf(t, rc); return st.Idle == 2 && st.Low == 1 && st.High == 2 })
	// Another limit alone leaves the watermarks; an IPv4-mapped spelling
	// of the peer replaces its entry.
	if code := put(`{"max_flows": 5000}`); code != http.StatusOK {
		t.Fatalf("PUT max_flows: %d", code)
	}
	if st := poolOf(t, rc); st.Low != 1 || st.High != 2 {
		t.Errorf("watermarks after an unrelated PUT: %+v", st)
	}
	if code := put(fmt.Sprintf(`{"pools": {%q: {"low": 8, "high": 10}}}`, mapped)); code != http.StatusOK {
		t.Fatalf("PUT: %d", code)
	}
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 10 })
}

// TestPoolKeyChange: a converter reloaded with a new key closes the pooled
// connections greeted under the old one; the entry relay's flows go on
// byte-exact once it has the new key too, on connections greeted anew.
func TestPoolKeyChange(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 3, 3)
	rs := startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	echo := echoServer(t)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 3 })
	waitFor(t, func() bool { return parkedOf(rs) == 3 })

	psk2 := filepath.Join(t.TempDir(), "psk2")
	if err := os.WriteFile(psk2, []byte("the next key 9876543210\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload := func(s *Server, y string) {
		t.Helper()
		y = regexp.MustCompile(`psk_file: "[^"]*"`).ReplaceAllString(y, fmt.Sprintf("psk_file: %q", psk2))
		cfg, err := ParseConfig([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	reload(rs, pp.rsYAML)
	if n := parkedOf(rs); n != 0 {
		t.Errorf("%d pooled connections greeted under the old key still parked", n)
	}
	reload(rc, pp.rcYAML)
	for i := range 6 {
		if err := echoThrough(rc.Addr("socks"), echo, 100_000); err != nil {
			t.Fatalf("flow %d after the key change: %v", i, err)
		}
	}
	waitFor(t, func() bool { return parkedOf(rs) == 3 })
}

// TestPoolParkedOnListenerChange: parked pooled connections close when
// their listener is replaced or stops taking Convert hops.
func TestPoolParkedOnListenerChange(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 2, 2)
	rs := startLoopback(t, pp.rsYAML)
	startLoopback(t, pp.rcYAML)
	waitFor(t, func() bool { return parkedOf(rs) == 2 })
	reload := func(y string) {
		t.Helper()
		cfg, err := ParseConfig([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if err := rs.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	// In place, without convert: parked connections go.
	reload(strings.Replace(pp.rsYAML, "protocols: [convert]", "protocols: [convert, socks5]", 1))
	waitFor(t, func() bool { return parkedOf(rs) == 2 }) // still a Convert listener: kept
	reload(strings.Replace(pp.rsYAML, "protocols: [convert]", "protocols: [socks5]", 1))
	if n := parkedOf(rs); n != 0 {
		t.Errorf("%d parked after the listener stopped taking Convert hops", n)
	}
}

// TestPoolBackoffPerRound: opens that fail together, because the peer is
// not there yet, make one round of backoff, not one each.
func TestPoolBackoffPerRound(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 8, 16)
	rc := startLoopback(t, pp.rcYAML)
	waitFor(t, func() bool { st := poolOf(t, rc); return st.Failed >= 16 && st.Opening == 0 })
	for _, p := range *rc.pools.Load() {
		p.mu.Lock()
		failing, wait := p.failing, time.Until(p.notUtil)
		p.mu.Unlock()
		if failing != 1 || wait > 100*time.Millisecond {
			t.Errorf("after one round of 16 failed opens: %d rounds of backoff, next try in %v; want 1 round, at most 100ms", failing, wait)
		}
	}
}

// TestPoolProtocolChange: a reload that turns a peer's mptcp on or off
// replaces the pool's idle connections with ones of the new protocol,
// rather than hand out the old kind until max_idle.
func TestPoolProtocolChange(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 3, 3)
	pp.rsYAML = strings.Replace(pp.rsYAML, "protocols: [convert],", "protocols: [convert], mptcp: true,", 1)
	startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	idle := func() (tcp, mptcp int) {
		p := (*rc.pools.Load())[netip.MustParseAddrPort(pp.rsAddr)]
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, pc := range p.idle {
			if ok, _ := pc.c.MultipathTCP(); ok {
				mptcp++
			} else {
				tcp++
			}
		}
		return tcp, mptcp
	}
	for _, want := range []bool{true, false} {
		y := pp.rcYAML
		if want {
			y = strings.Replace(y, "pool: {", "mptcp: true, pool: {", 1)
		}
		cfg, err := ParseConfig([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			tcp, mp := idle()
			if want && tcp == 0 && mp == 3 || !want && tcp == 3 && mp == 0 {
				break
			}
			if i > 500 {
				t.Fatalf("peer mptcp: %v: %d TCP and %d MPTCP connections idle, want 3 of the new kind only", want, tcp, mp)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	echo := echoServer(t)
	if err := echoThrough(rc.Addr("socks"), echo, 100_000); err != nil {
		t.Errorf("flow after the changes: %v", err)
	}
}

// TestPoolLegChange: a reload that changes legs.relay's socket options
// replaces the pool's idle connections with ones opened with the new
// options, rather than hand out the old ones until max_idle.
func TestPoolLegChange(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 3, 3)
	startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	userTimeouts := func() (out []int) {
		p := (*rc.pools.Load())[netip.MustParseAddrPort(pp.rsAddr)]
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, pc := range p.idle {
			rawc, err := pc.c.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			v, gerr := -1, error(nil)
			rawc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) })
			if gerr != nil {
				t.Fatal(gerr)
			}
			out = append(out, v)
		}
		return out
	}
	for _, ms := range []int{7000, 0} {
		y := pp.rcYAML
		if ms > 0 {
			y = strings.Replace(y, "auth:", fmt.Sprintf("legs: {relay: {user_timeout: %dms}}\nauth:", ms), 1)
		}
		cfg, err := ParseConfig([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			got := userTimeouts()
			if len(got) == 3 && slices.Equal(got, []int{ms, ms, ms}) {
				break
			}
			if i > 500 {
				t.Fatalf("legs.relay.user_timeout %d ms: idle connections have %v ms, want 3 of %d", ms, got, ms)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestPoolClientsNarrowed: a peer taken out of allow_clients cannot use
// the connections it pooled before: each request is judged by the
// configuration in force when it comes.
func TestPoolClientsNarrowed(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 3, 3)
	rs := startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	echo := echoServer(t)
	waitFor(t, func() bool { return parkedOf(rs) == 3 })
	if err := reloadYAML(t, rs, strings.Replace(pp.rsYAML, "allow_clients: [127.0.0.1/32]", "allow_clients: [10.9.9.9/32]", 1)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := echoThrough(rc.Addr("socks"), echo, 1000); err == nil {
			t.Errorf("flow %d went through rs, which no longer allows rc", i)
		}
	}
}
