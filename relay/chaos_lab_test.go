package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"halfway/netlab/labtest"
	"halfway/socks5"
)

// chaosFlow is one flow's outcome.
type chaosFlow struct {
	kind string
	size int
	err  error
}

// TestChainPoolChaos: seeded, bounded randomized flows of random sizes
// through rc → rs → server, SOCKS5 (rc waits for the chain's answer) and
// forward listeners (rc pipelines the client's bytes ahead of the answer),
// from a pool, while rs's pooled connections are reset (ss -K), time out at
// rs (limits.pooled_wait), and rs crashes (SIGKILL) or drains (SIGINT) and
// comes back. Every flow that completes is byte-exact; every one that fails
// delivered a prefix of what was sent (nothing duplicated or reordered);
// a flow to a refused port never succeeds. Once the chaos stops, the pool
// refills and flows, refused ones included, get exactly their answer, and
// rc holds no flow and no more goroutines than before.
//
// CHAOS_SEED replays a run; CHAOS_QUIET=1 (with CHAOS_PW=300ms, say)
// leaves out the chaos, so only rs's pooled_wait closes connections, and
// then no flow may fail; CHAOS_LOGDIR keeps the relays' logs.
func TestChainPoolChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("CHAOS_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	lab := labtest.Start(t, chainTopo)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), []byte("a test key that is long enough!!"), 0o600)
	client, rcH, rsH, server := lab.Host("client"), lab.Host("rc"), lab.Host("rs"), lab.Host("server")
	rsHop := netip.AddrPortFrom(rsH.Ifaces()[0].Addr4.Addr(), 7100).String()
	echo, refused := server.AddrPort(9000), server.AddrPort(9001)
	serveEchoOn(t, server, 9000)

	pooledWait := []string{"300ms", "800ms", "2s", "10m"}[rng.IntN(4)]
	if v := os.Getenv("CHAOS_PW"); v != "" {
		pooledWait = v
	}
	quiet := os.Getenv("CHAOS_QUIET") != ""
	maxIdle := []string{"500ms", "1s", "3s", "2m"}[rng.IntN(4)]
	low := 2 + rng.IntN(4)
	t.Logf("pooled_wait %s, max_idle %s, pool low %d high %d", pooledWait, maxIdle, low, 2*low)
	rs := newChaosRelay(t, rsH, "rs", fmt.Sprintf(`
admin: {listen: off}
log: {level: debug}
auth: {psk_file: %s/psk}
limits: {pooled_wait: %s}
listeners:
  - {name: hop, listen: 0.0.0.0:7100, protocols: [convert], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.0.0/16]}
`, dir, pooledWait))
	newChaosRelay(t, rcH, "rc", fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
log: {level: debug}
auth: {psk_file: %s/psk}
limits: {connect_timeout: 3s}
listeners:
  - {name: socks, listen: 0.0.0.0:1080, protocols: [socks5], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.0.0/16]}
  - {name: fwd, listen: 0.0.0.0:1081, mode: forward, forward_to: %q}
  - {name: fwdrefused, listen: 0.0.0.0:1082, mode: forward, forward_to: %q}
routes:
  - {via: [%s]}
peers:
  - {address: %s, pool: {low: %d, high: %d, max_idle: %s}}
`, dir, echo, refused, rsHop, rsHop, low, 2*low, maxIdle))
	waitAccept(t, client, rcH.AddrPort(1080))
	waitAccept(t, rcH, rsHop)
	waitAccept(t, rcH, "127.0.0.1:9190")
	waitPool := func(what string) {
		t.Helper()
		for i := 0; ; i++ {
			if st := poolStatus(t, rcH); len(st) == 1 && st[0].Idle >= low {
				return
			}
			if i > 300 {
				t.Fatalf("%s: rc's pool never refilled: %+v", what, poolStatus(t, rcH))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitPool("start")
	// rc's goroutines and flows, for a leak check at the end.
	rcLoad := func() (goroutines, flows int) {
		resp, err := adminClient(rcH).Get("http://127.0.0.1:9190/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		resp.Body.Close()
		goroutines, _ = strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total")))
		resp, err = adminClient(rcH).Get("http://127.0.0.1:9190/api/flows")
		if err != nil {
			t.Fatal(err)
		}
		var fl []json.RawMessage
		json.NewDecoder(resp.Body).Decode(&fl)
		resp.Body.Close()
		return goroutines, len(fl)
	}
	g0, _ := rcLoad()

	// flow runs one flow of kind with size random bytes and a random
	// write pattern, and checks what came back.
	flow := func(r *rand.Rand, kind string, size int) chaosFlow {
		res := chaosFlow{kind: kind, size: size}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		port := map[string]uint16{"socks": 1080, "socks-refused": 1080, "fwd": 1081, "fwd-refused": 1082}[kind]
		nc, err := client.Dial(ctx, "tcp", rcH.AddrPort(port))
		if err != nil {
			res.err = fmt.Errorf("dial rc: %w", err)
			return res
		}
		c := nc.(*net.TCPConn)
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		if kind == "socks" || kind == "socks-refused" {
			dst := netip.MustParseAddrPort(echo)
			if kind == "socks-refused" {
				dst = netip.MustParseAddrPort(refused)
			}
			if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
				res.err = fmt.Errorf("socks: %w", err)
				return res
			}
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		chunks := 1 + r.IntN(4)
		pause := time.Duration(r.IntN(20)) * time.Millisecond
		errc := make(chan error, 1)
		go func() {
			b := data
			for i := 0; i < chunks && len(b) > 0; i++ {
				n := len(b)
				if i < chunks-1 {
					n = len(b) / 2
				}
				if _, err := c.Write(b[:n]); err != nil {
					errc <- err
					return
				}
				b = b[n:]
				time.Sleep(pause)
			}
			errc <- c.CloseWrite()
		}()
		got, rerr := io.ReadAll(c)
		werr := <-errc
		if !bytes.HasPrefix(data, got) {
			// Wrong bytes: the one outcome never allowed.
			i := 0
			for i < len(got) && i < len(data) && got[i] == data[i] {
				i++
			}
			res.err = fmt.Errorf("WRONG BYTES: got %d bytes (sha %x), want a prefix of the %d sent; first difference at %d",
				len(got), sha256.Sum256(got), size, i)
			return res
		}
		switch {
		case rerr != nil:
			res.err = fmt.Errorf("read after %d of %d bytes: %w", len(got), size, rerr)
		case len(got) != size:
			// The kernel reports a reset to one call: when the write took
			// it, the read sees a plain end of stream.
			res.err = fmt.Errorf("EOF after %d of %d bytes (write: %w)", len(got), size, werr)
		case werr != nil:
			res.err = fmt.Errorf("write: %w", werr)
		}
		return res
	}
	kinds := []string{"socks", "fwd", "fwd", "socks", "socks-refused", "fwd-refused"}
	randomSize := func(r *rand.Rand) int {
		switch r.IntN(4) {
		case 0:
			return r.IntN(100)
		case 1:
			return 100 + r.IntN(3000)
		case 2:
			return 3000 + r.IntN(70_000)
		}
		return 70_000 + r.IntN(300_000)
	}

	// Chaos: bounded in count and time.
	chaosEnd := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var results []chaosFlow
	var actions []string
	stopChaos := make(chan struct{})
	chaosDone := make(chan struct{})
	crng := rand.New(rand.NewPCG(rng.Uint64(), 1))
	go func() {
		defer close(chaosDone)
		for i := 0; i < 60 && time.Now().Before(chaosEnd); i++ {
			select {
			case <-stopChaos:
				return
			case <-time.After(time.Duration(100+crng.IntN(500)) * time.Millisecond):
			}
			var a string
			if quiet {
				continue
			}
			switch n := crng.IntN(10); {
			case n < 6:
				// Reset rs's idle connections from rc (the pooled ones,
				// and flows that happen to be quiet).
				a = "ss -K idle"
				rsH.Command(context.Background(), "ss", "-K", "-t", "state", "established", "( sport = :7100 )").Run()
			case n < 8:
				a = "kill -9 rs"
				rs.stop(syscall.SIGKILL)
				time.Sleep(time.Duration(crng.IntN(300)) * time.Millisecond)
				rs.start()
			default:
				a = "drain rs"
				rs.stop(os.Interrupt)
				rs.start()
			}
			mu.Lock()
			actions = append(actions, a)
			mu.Unlock()
		}
	}()
	const workers = 6
	for w := range workers {
		wr := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200 && time.Now().Before(chaosEnd); i++ {
				res := flow(wr, kinds[wr.IntN(len(kinds))], randomSize(wr))
				mu.Lock()
				results = append(results, res)
				mu.Unlock()
				// Mostly back to back, sometimes a gap, so pooled
				// connections also sit idle, up to rs's pooled_wait.
				gap := time.Duration(wr.IntN(30)) * time.Millisecond
				if wr.IntN(4) == 0 {
					gap = time.Duration(200+wr.IntN(600)) * time.Millisecond
				}
				time.Sleep(gap)
			}
		}()
	}
	wg.Wait()
	close(stopChaos)
	<-chaosDone

	counts := map[string][2]int{}
	for _, r := range results {
		c := counts[r.kind]
		refusedKind := r.kind == "socks-refused" || r.kind == "fwd-refused"
		switch {
		case r.err != nil && bytes.Contains([]byte(r.err.Error()), []byte("WRONG BYTES")):
			t.Errorf("%s flow of %d bytes: %v", r.kind, r.size, r.err)
		case refusedKind && r.err == nil && r.kind == "fwd-refused" && r.size > 0:
			t.Errorf("%s flow of %d bytes succeeded", r.kind, r.size)
		case refusedKind && r.err == nil && r.kind == "socks-refused":
			t.Errorf("%s flow succeeded", r.kind)
		}
		if r.err != nil && quiet && !refusedKind {
			// No chaos but rs's pooled_wait: nothing may fail.
			t.Errorf("quiet: %s flow of %d bytes: %v", r.kind, r.size, r.err)
		}
		if r.err == nil {
			c[0]++
		} else {
			c[1]++
		}
		counts[r.kind] = c
	}
	t.Logf("chaos: %d actions %v; flows ok/failed by kind: %v; pool %+v", len(actions), actions, counts, poolStatus(t, rcH))

	// Calm: rs up, the pool refills; then every flow gets its answer.
	// Wait for rs's listener, and past max_idle's sweep, for the pool.
	waitAccept(t, rcH, rsHop)
	waitPool("after the chaos")
	for i := 0; i < 12; i++ {
		kind := kinds[i%len(kinds)]
		size := randomSize(rng)
		res := flow(rng, kind, size)
		switch kind {
		case "socks", "fwd":
			if res.err != nil {
				t.Errorf("calm: %s flow of %d bytes: %v", kind, size, res.err)
			}
		case "socks-refused":
			var re *socks5.ReplyError
			if !errors.As(res.err, &re) || re.Reply != socks5.ConnectionRefused {
				t.Errorf("calm: socks flow to a refused port: %v, want connection refused", res.err)
			}
		case "fwd-refused":
			if !errors.Is(res.err, syscall.ECONNRESET) {
				t.Errorf("calm: forward flow to a refused port: %v, want a reset", res.err)
			}
		}
	}
	// Every flow ended; rc's goroutines are back near where they began
	// (the pool's idle connections hold none).
	for i := 0; ; i++ {
		g, n := rcLoad()
		if n == 0 && g <= g0+10 {
			break
		}
		if i > 100 {
			t.Errorf("after the flows: rc has %d flows and %d goroutines (%d at the start)", n, g, g0)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := poolStatus(t, rcH); st[0].Taken == 0 {
		t.Errorf("pool: %+v, no flow took a pooled connection", st[0])
	}
}
