package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"halfway/netlab"
	"halfway/netlab/labtest"
	"halfway/relay"
)

// chaosRelay runs `halfway relay` in a lab host and can kill it (SIGKILL,
// a crash) or stop it (SIGINT, a drain), and start it again.
type chaosRelay struct {
	t    *testing.T
	h    *netlab.Host
	file string
	log  *os.File
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func newChaosRelay(t *testing.T, h *netlab.Host, name, cfg string) *chaosRelay {
	t.Helper()
	dir := t.TempDir()
	r := &chaosRelay{t: t, h: h, file: filepath.Join(dir, name+".yaml")}
	os.WriteFile(r.file, []byte(cfg), 0o644)
	r.log, _ = os.Create(filepath.Join(dir, name+".log"))
	t.Cleanup(func() {
		r.stop(syscall.SIGKILL)
		r.log.Close()
		if d := os.Getenv("CHAOS_LOGDIR"); d != "" {
			b, _ := os.ReadFile(r.log.Name())
			os.WriteFile(filepath.Join(d, name+".log"), b, 0o644)
		}
		if t.Failed() {
			b, _ := os.ReadFile(r.log.Name())
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("%s relay log (tail):\n%s", name, b)
		}
	})
	r.start()
	return r
}

func (r *chaosRelay) start() {
	bin, err := buildOnce()
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := r.h.Command(context.Background(), bin, "relay", "-c", r.file, "--grace", "1s")
	cmd.Stdout, cmd.Stderr = r.log, r.log
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
}

// stop sends sig and waits (bounded) for the relay to exit.
func (r *chaosRelay) stop(sig os.Signal) {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// pooledPair starts rc, forwarding its port 1081 to an echo server
// through rs, with a pool of one connection to rs, whose pooled_wait is
// wait. It returns the client host, rc's host and rs.
func pooledPair(t *testing.T, wait string) (client, rcH *netlab.Host, rs *chaosRelay) {
	t.Helper()
	lab := labtest.Start(t, chainTopo)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), []byte("a test key that is long enough!!"), 0o600)
	client, rcH, rsH, server := lab.Host("client"), lab.Host("rc"), lab.Host("rs"), lab.Host("server")
	rsHop := netip.AddrPortFrom(rsH.Ifaces()[0].Addr4.Addr(), 7100).String()
	echo := server.AddrPort(9000)
	serveEchoOn(t, server, 9000)
	rs = newChaosRelay(t, rsH, "rs", fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %s/psk}
limits: {pooled_wait: %s}
listeners:
  - {name: hop, listen: 0.0.0.0:7100, protocols: [convert], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.0.0/16]}
`, dir, wait))
	newChaosRelay(t, rcH, "rc", fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
auth: {psk_file: %s/psk}
limits: {connect_timeout: 5s}
listeners:
  - {name: fwd, listen: 0.0.0.0:1081, mode: forward, forward_to: %q}
routes:
  - {via: [%s]}
peers:
  - {address: %s, pool: {low: 1, high: 1}}
`, dir, echo, rsHop, rsHop))
	// rc's admin API opens after its listeners. A probe of port 1081
	// itself would be a flow: one that took the pooled connection after
	// waitFreshPooled saw it idle left the test's own flow a fresh dial,
	// which a drain resets in rs's accept queue (a CI failure: round 0,
	// "read: connection reset by peer").
	waitAccept(t, rcH, "127.0.0.1:9190")
	return client, rcH, rs
}

// waitFreshPooled waits until rc's pool holds one idle connection opened
// after st0 was read.
func waitFreshPooled(t *testing.T, rcH *netlab.Host, st0 []relay.PoolStatus) []relay.PoolStatus {
	t.Helper()
	for i := 0; ; i++ {
		st := poolStatus(t, rcH)
		if len(st) == 1 && st[0].Idle == 1 && st[0].Opened > st0[0].Opened {
			return st
		}
		if i > 300 {
			t.Fatalf("pool never refilled: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sendStopped sends a request through rc while rs is stopped (SIGSTOP):
// rs's kernel acknowledges it, its process has not read it. Then rs gets
// sig, if any, and goes on (SIGCONT). It returns what the client read back.
func sendStopped(t *testing.T, client, rcH *netlab.Host, rs *chaosRelay, data []byte, sig os.Signal) ([]byte, error) {
	t.Helper()
	rs.mu.Lock()
	proc := rs.cmd.Process
	rs.mu.Unlock()
	proc.Signal(syscall.SIGSTOP)
	nc, err := client.Dial(context.Background(), "tcp", rcH.AddrPort(1081))
	if err != nil {
		proc.Signal(syscall.SIGCONT)
		t.Fatal(err)
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(data)
	c.CloseWrite()
	time.Sleep(1500 * time.Millisecond) // past a pooled_wait of 1s
	if sig != nil {
		proc.Signal(sig)
	}
	proc.Signal(syscall.SIGCONT)
	return io.ReadAll(c)
}

// TestPooledRequestAtExpiry: rc takes a pooled connection and sends its
// request while rs is paused (SIGSTOP: a stalled or overloaded process);
// rs's kernel acknowledges it, and rs's pooled_wait passes before rs runs
// again. The request was there in time: rs serves it rather than close the
// connection, which would reset the flow (rc may not send acknowledged
// bytes again, so it cannot retry).
func TestPooledRequestAtExpiry(t *testing.T) {
	client, rcH, rs := pooledPair(t, "1s")
	for round := range 3 {
		// A fresh pooled connection, well inside rs's pooled_wait: the
		// one that replaces the current one when rs expires it.
		st := waitFreshPooled(t, rcH, poolStatus(t, rcH))
		data := []byte(fmt.Sprintf("request %d", round))
		got, err := sendStopped(t, client, rcH, rs, data, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("round %d: a flow whose request reached rs before its pooled_wait passed: got %q, %v; want %q", round, got, err, data)
		}
		if st1 := poolStatus(t, rcH); st1[0].Taken != st[0].Taken+1 {
			t.Fatalf("round %d: the flow did not take the pooled connection: %+v, then %+v", round, st[0], st1[0])
		}
	}
}

// TestPooledRequestAtDrain: rc takes a pooled connection and sends its
// request while rs is stopped, and rs gets SIGTERM before it goes on.
// rs's kernel acknowledged the request, so rc may not send it again: rs's
// drain must serve it (the flow then holds the drain within its grace),
// not close the connection with the request unread and reset it.
func TestPooledRequestAtDrain(t *testing.T) {
	client, rcH, rs := pooledPair(t, "30s")
	for round := range 4 {
		pre := []relay.PoolStatus{{}}
		if round > 0 {
			// rc's idle connection went with the last rs: a flow finds
			// it dead, and the pool refills from the new rs.
			rs.start()
			waitAccept(t, rs.h, netip.AddrPortFrom(rs.h.Ifaces()[0].Addr4.Addr(), 7100).String())
			pre = poolStatus(t, rcH)
			nc, err := client.Dial(context.Background(), "tcp", rcH.AddrPort(1081))
			if err != nil {
				t.Fatal(err)
			}
			err = echoOnce(nc, "warm-up")
			nc.Close()
			if err != nil {
				t.Fatalf("round %d: a flow through the restarted rs: %v", round, err)
			}
		}
		st := waitFreshPooled(t, rcH, pre)
		data := []byte(fmt.Sprintf("request %d", round))
		got, err := sendStopped(t, client, rcH, rs, data, syscall.SIGTERM)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("round %d: a flow whose request reached rs before it began to drain: got %q, %v; want %q", round, got, err, data)
		}
		if st1 := poolStatus(t, rcH); st1[0].Taken != st[0].Taken+1 {
			t.Fatalf("round %d: the flow did not take the pooled connection: %+v, then %+v", round, st[0], st1[0])
		}
		rs.stop(syscall.SIGTERM) // waits for the drain's end
	}
}
