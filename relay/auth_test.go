package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// fakeClock is a settable clock for hopAuth.now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var t0 = time.Unix(1_700_000_000, 0)

// testAuth is a hopAuth with a 30 s window on a fake clock set to t0.
func testAuth(key []byte) (*hopAuth, *fakeClock) {
	clk := &fakeClock{t: t0}
	a := newHopAuth(key, 30*time.Second)
	a.now, a.since = clk.now, t0.Unix()-3600 // started an hour before t0
	return a, clk
}

func TestCookieRoundTrip(t *testing.T) {
	for _, d := range []string{"10.0.0.1:443", "[2001:db8::1]:80", "192.0.2.1:1", "[::1]:65535"} {
		t.Run(d, func(t *testing.T) {
			a := newHopAuth(testKey, 30*time.Second) // real clock
			dst := netip.MustParseAddrPort(d)
			c := a.cookie(testHop, dst)
			if len(c) != cookieLen {
				t.Fatalf("cookie is %d bytes, want %d", len(c), cookieLen)
			}
			if err := a.verify(c, testHop, dst); err != nil {
				t.Fatalf("verify: %v", err)
			}
		})
	}
}

// Another relay of the fleet (same key, its own state) accepts the cookie.
func TestCookieAcrossRelays(t *testing.T) {
	sender, _ := testAuth(testKey)
	receiver, _ := testAuth(append([]byte(nil), testKey...))
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	if err := receiver.verify(sender.cookie(testHop, dst), testHop, dst); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

func TestCookieFreshNonces(t *testing.T) {
	a, _ := testAuth(testKey)
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	c1, c2 := a.cookie(testHop, dst), a.cookie(testHop, dst)
	if bytes.Equal(c1[4:12], c2[4:12]) {
		t.Fatalf("two cookies share the nonce %x", c1[4:12])
	}
	for _, c := range [][]byte{c1, c2} {
		if err := a.verify(c, testHop, dst); err != nil {
			t.Fatalf("verify: %v", err)
		}
	}
}

func TestCookieWrongDestination(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"10.0.0.1:443", "10.0.0.2:443"},
		{"10.0.0.1:443", "10.0.0.1:444"},
		{"10.0.0.1:443", "[2001:db8::1]:443"},
		{"[2001:db8::1]:443", "[2001:db8::2]:443"},
		{"[2001:db8::1]:443", "[2001:db8::1]:80"},
	} {
		t.Run(tc.a+"→"+tc.b, func(t *testing.T) {
			a, _ := testAuth(testKey)
			dstA, dstB := netip.MustParseAddrPort(tc.a), netip.MustParseAddrPort(tc.b)
			c := a.cookie(testHop, dstA)
			if err := a.verify(c, testHop, dstB); !errors.Is(err, errCookieBad) {
				t.Fatalf("cookie for %s verified for %s: %v, want %v", dstA, dstB, err, errCookieBad)
			}
			// The failed attempt does not burn the nonce.
			if err := a.verify(c, testHop, dstA); err != nil {
				t.Fatalf("verify for its own destination: %v", err)
			}
		})
	}
}

func TestCookieTampered(t *testing.T) {
	a, _ := testAuth(testKey)
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	c := a.cookie(testHop, dst)
	for i := range c {
		for _, flip := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(c)
			bad[i] ^= flip
			if err := a.verify(bad, testHop, dst); !errors.Is(err, errCookieBad) {
				t.Errorf("byte %d ^ %#02x: verify = %v, want %v", i, flip, err, errCookieBad)
			}
		}
	}
	if err := a.verify(c, testHop, dst); err != nil {
		t.Fatalf("untampered cookie after tampered ones: %v", err)
	}
}

func TestCookieMalformed(t *testing.T) {
	a, _ := testAuth(testKey)
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	c := a.cookie(testHop, dst)
	for _, tc := range []struct {
		name string
		c    []byte
		want error
	}{
		{"nil", nil, errCookieMissing},
		{"empty", []byte{}, errCookieBad}, // a Cookie TLV with no data
		{"one byte", []byte{0}, errCookieBad},
		{"truncated", c[:cookieLen-1], errCookieBad},
		{"extended", append(bytes.Clone(c), 0), errCookieBad},
		{"zeros", make([]byte, cookieLen), errCookieBad},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := a.verify(tc.c, testHop, dst); !errors.Is(err, tc.want) {
				t.Errorf("verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCookieReplay(t *testing.T) {
	a, clk := testAuth(testKey)
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	c := a.cookie(testHop, dst)
	if err := a.verify(c, testHop, dst); err != nil {
		t.Fatalf("first verify: %v", err)
	}
	for _, after := range []time.Duration{0, time.Second, 30 * time.Second} {
		clk.set(t0.Add(after))
		if err := a.verify(c, testHop, dst); !errors.Is(err, errCookieReplay) {
			t.Errorf("replay %v later: verify = %v, want %v", after, err, errCookieReplay)
		}
	}
	// Once the nonce is forgotten, the timestamp is stale: never accepted again.
	clk.set(t0.Add(31 * time.Second))
	if err := a.verify(c, testHop, dst); err == nil {
		t.Errorf("replay after the window accepted")
	}
}

func TestCookieReplayConcurrent(t *testing.T) {
	a, _ := testAuth(testKey)
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	c := a.cookie(testHop, dst)
	const n = 16
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { errs <- a.verify(c, testHop, dst) })
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, errCookieReplay):
			t.Errorf("verify = %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent verifies accepted the same cookie, want 1", ok, n)
	}
}

func TestCookieWindow(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	for _, tc := range []struct {
		name string
		skew time.Duration // verifier's clock minus the sender's
		want error
	}{
		{"same time", 0, nil},
		{"1s old", time.Second, nil},
		{"29s old", 29 * time.Second, nil},
		{"30s old (edge)", 30 * time.Second, nil},
		{"31s old", 31 * time.Second, errCookieStale},
		{"an hour old", time.Hour, errCookieStale},
		{"a day old", 24 * time.Hour, errCookieStale},
		{"30s ahead (edge)", -30 * time.Second, nil},
		{"31s ahead", -31 * time.Second, errCookieStale},
		{"an hour ahead", -time.Hour, errCookieStale},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sender, sclk := testAuth(testKey)
			receiver, rclk := testAuth(testKey)
			sclk.set(t0)
			rclk.set(t0.Add(tc.skew))
			if err := receiver.verify(sender.cookie(testHop, dst), testHop, dst); !errors.Is(err, tc.want) {
				t.Errorf("verify = %v, want %v", err, tc.want)
			}
		})
	}
}

// A stale cookie is refused before its nonce is remembered.
func TestCookieStaleNotRemembered(t *testing.T) {
	sender, sclk := testAuth(testKey)
	receiver, _ := testAuth(testKey)
	sclk.set(t0.Add(-time.Hour))
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	if err := receiver.verify(sender.cookie(testHop, dst), testHop, dst); !errors.Is(err, errCookieStale) {
		t.Fatalf("verify = %v, want %v", err, errCookieStale)
	}
	if len(receiver.seen) != 0 {
		t.Errorf("stale cookie's nonce remembered: %d entries", len(receiver.seen))
	}
}

func TestCookieWrongKey(t *testing.T) {
	sender, _ := testAuth(testKey)
	for _, key := range [][]byte{
		[]byte("0123456789abcdef0123456789abcdeF"),
		[]byte("0123456789abcdef0123456789abcde"),
		[]byte("another key entirely, 32 bytes!!"),
	} {
		receiver, _ := testAuth(key)
		dst := netip.MustParseAddrPort("10.0.0.1:443")
		if err := receiver.verify(sender.cookie(testHop, dst), testHop, dst); !errors.Is(err, errCookieBad) {
			t.Errorf("key %q: verify = %v, want %v", key, err, errCookieBad)
		}
	}
}

// The seen-nonce map never grows past max: with every nonce live, new
// cookies are refused; expired nonces are pruned to make room.
func TestCookieSeenBounded(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")

	t.Run("all live: refuse", func(t *testing.T) {
		a, _ := testAuth(testKey)
		a.max = 4
		for i := range a.max {
			if err := a.verify(a.cookie(testHop, dst), testHop, dst); err != nil {
				t.Fatalf("cookie %d: %v", i, err)
			}
		}
		for i := range 3 {
			if err := a.verify(a.cookie(testHop, dst), testHop, dst); !errors.Is(err, errCookieReplay) {
				t.Errorf("cookie %d past max: verify = %v, want refusal %v", a.max+i, err, errCookieReplay)
			}
		}
		if len(a.seen) != a.max {
			t.Errorf("seen has %d entries, want %d", len(a.seen), a.max)
		}
	})

	t.Run("all expired: prune", func(t *testing.T) {
		a, clk := testAuth(testKey)
		a.max = 4
		for range a.max {
			if err := a.verify(a.cookie(testHop, dst), testHop, dst); err != nil {
				t.Fatal(err)
			}
		}
		clk.set(t0.Add(31 * time.Second))
		if err := a.verify(a.cookie(testHop, dst), testHop, dst); err != nil {
			t.Fatalf("verify after the old nonces expired: %v", err)
		}
		if len(a.seen) != 1 {
			t.Errorf("seen has %d entries after pruning, want 1", len(a.seen))
		}
	})

	t.Run("some expired: prune those only", func(t *testing.T) {
		a, clk := testAuth(testKey)
		a.max = 4
		old, oclk := testAuth(testKey)
		oclk.set(t0.Add(-30 * time.Second)) // live until t0
		var live [][]byte
		for i := range a.max {
			var c []byte
			if i%2 == 0 {
				c = old.cookie(testHop, dst)
			} else {
				c = a.cookie(testHop, dst) // live until t0+30s
				live = append(live, c)
			}
			if err := a.verify(c, testHop, dst); err != nil {
				t.Fatalf("cookie %d: %v", i, err)
			}
		}
		clk.set(t0.Add(time.Second))
		if err := a.verify(a.cookie(testHop, dst), testHop, dst); err != nil {
			t.Fatalf("verify with two expired nonces: %v", err)
		}
		if len(a.seen) != 3 {
			t.Errorf("seen has %d entries, want 3 (2 live + 1 new)", len(a.seen))
		}
		// Pruning did not forget live nonces.
		for _, c := range live {
			if err := a.verify(c, testHop, dst); !errors.Is(err, errCookieReplay) {
				t.Errorf("live cookie replayed after pruning: verify = %v, want %v", err, errCookieReplay)
			}
		}
		if len(a.seen) > a.max {
			t.Errorf("seen grew to %d, max %d", len(a.seen), a.max)
		}
	})
}

// testHop is the relay address the test cookies are sent to.
var testHop = netip.MustParseAddrPort("10.0.0.9:7100")

// TestCookieBoundToRelay: a cookie captured on the way to one relay of the
// fleet is refused by another.
func TestCookieBoundToRelay(t *testing.T) {
	a := newHopAuth([]byte("0123456789abcdef"), 30*time.Second)
	dst := netip.MustParseAddrPort("10.0.0.1:80")
	c := a.cookie(testHop, dst)
	other := netip.MustParseAddrPort("10.0.0.10:7100")
	if err := a.verify(c, other, dst); err == nil {
		t.Error("a cookie for one relay was accepted by another")
	}
	if err := a.verify(c, testHop, dst); err != nil {
		t.Errorf("the cookie's own relay refused it: %v", err)
	}
}

// TestCookieAdvertisedIdentity: behind NAT the sender signs the public
// address; the relay accepts it when it advertises that address.
func TestCookieAdvertisedIdentity(t *testing.T) {
	a := newHopAuth([]byte("0123456789abcdef"), 30*time.Second)
	dst := netip.MustParseAddrPort("10.0.0.1:80")
	public := netip.MustParseAddrPort("203.0.113.5:7100")
	local := netip.MustParseAddrPort("10.0.0.9:7100")
	if err := a.verify(a.cookie(public, dst), local, dst); err == nil {
		t.Fatal("a cookie for another address was accepted without advertise")
	}
	a.identities = []netip.AddrPort{public}
	if err := a.verify(a.cookie(public, dst), local, dst); err != nil {
		t.Errorf("a cookie for the advertised address was refused: %v", err)
	}
}

// A pool greeting's cookie authenticates a pooled connection to the relay
// it names, once; it is never a hop cookie (nor the other way round), not
// even for the zero destination it is computed over.
func TestPoolCookie(t *testing.T) {
	a := newHopAuth(testKey, 30*time.Second)
	relay := netip.MustParseAddrPort("10.0.0.2:7100")
	other := netip.MustParseAddrPort("10.0.0.3:7100")
	pc := a.poolCookie(relay)
	if err := a.verify(pc, relay, netip.AddrPort{}); !errors.Is(err, errCookieBad) {
		t.Errorf("pool cookie as hop cookie: %v, want %v", err, errCookieBad)
	}
	if err := a.verifyPool(pc, other); !errors.Is(err, errCookieBad) {
		t.Errorf("pool cookie at another relay: %v, want %v", err, errCookieBad)
	}
	if err := a.verifyPool(pc, relay); err != nil {
		t.Errorf("pool cookie: %v", err)
	}
	if err := a.verifyPool(pc, relay); !errors.Is(err, errCookieReplay) {
		t.Errorf("pool cookie again: %v, want %v", err, errCookieReplay)
	}
	hc := a.cookie(relay, netip.AddrPort{})
	if err := a.verifyPool(hc, relay); !errors.Is(err, errCookieBad) {
		t.Errorf("hop cookie as pool cookie: %v, want %v", err, errCookieBad)
	}
	if err := a.verifyPool(nil, relay); !errors.Is(err, errCookieMissing) {
		t.Errorf("no cookie: %v, want %v", err, errCookieMissing)
	}
}

// A pipelined hop cookie verifies as a hop cookie and says so; it is bound
// to its relay and destination like the other kind.
func TestPipelinedCookie(t *testing.T) {
	a := newHopAuth(testKey, 30*time.Second)
	dst := netip.MustParseAddrPort("10.0.3.2:80")
	p, err := a.verifyHop(a.pipelinedCookie(testHop, dst), testHop, dst)
	if err != nil || !p {
		t.Errorf("pipelined cookie: %v, %v; want pipelined", p, err)
	}
	p, err = a.verifyHop(a.cookie(testHop, dst), testHop, dst)
	if err != nil || p {
		t.Errorf("plain cookie: %v, %v; want not pipelined", p, err)
	}
	if _, err := a.verifyHop(a.pipelinedCookie(testHop, dst), testHop, netip.MustParseAddrPort("10.0.3.2:81")); !errors.Is(err, errCookieBad) {
		t.Errorf("pipelined cookie for another destination: %v, want %v", err, errCookieBad)
	}
	if err := a.verifyPool(a.pipelinedCookie(testHop, netip.AddrPort{}), testHop); !errors.Is(err, errCookieBad) {
		t.Errorf("pipelined cookie as pool cookie: %v", err)
	}
}

// TestCookieReplayAfterRestart: a relay that restarted has forgotten the
// nonces it saw, so it refuses cookies signed before it started, though
// inside the window.
func TestCookieReplayAfterRestart(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	sender, sclk := testAuth(testKey)
	before := sender.cookie(testHop, dst)
	first, _ := testAuth(testKey)
	if err := first.verify(before, testHop, dst); err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	restarted, rclk := testAuth(testKey)
	restarted.since = t0.Add(5 * time.Second).Unix()
	rclk.set(t0.Add(10 * time.Second))
	if err := restarted.verify(before, testHop, dst); !errors.Is(err, errCookieStale) {
		t.Errorf("a cookie signed before the restart, replayed after: %v, want %v", err, errCookieStale)
	}
	sclk.set(t0.Add(6 * time.Second))
	if err := restarted.verify(sender.cookie(testHop, dst), testHop, dst); err != nil {
		t.Errorf("a cookie signed after the restart: %v", err)
	}
}

// A window that is not whole seconds is not cut down to whole seconds:
// timestamps are, so a cookie 200 ms old may be a second old by them, and
// is accepted under a 500 ms window; a window of 1.5 s takes one signed
// 1.8 s earlier by the clocks (1.2 s in fact). What is too old by more than
// the window rounded up still is.
func TestCookieSubSecondWindow(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	for _, tc := range []struct {
		window       time.Duration
		sign, verify time.Duration // after t0
		want         error
	}{
		{500 * time.Millisecond, 900 * time.Millisecond, 1100 * time.Millisecond, nil},
		{10 * time.Millisecond, 995 * time.Millisecond, 1000 * time.Millisecond, nil},
		{1500 * time.Millisecond, 900 * time.Millisecond, 2100 * time.Millisecond, nil},
		{500 * time.Millisecond, 900 * time.Millisecond, 2100 * time.Millisecond, errCookieStale},
		{1500 * time.Millisecond, 0, 3 * time.Second, errCookieStale},
	} {
		sender, sclk := testAuth(testKey)
		receiver, rclk := testAuth(testKey)
		receiver.window.Store(int64(tc.window))
		sclk.set(t0.Add(tc.sign))
		rclk.set(t0.Add(tc.verify))
		c := sender.cookie(testHop, dst)
		if err := receiver.verify(c, testHop, dst); !errors.Is(err, tc.want) {
			t.Errorf("window %v, signed at +%v, verified at +%v: %v, want %v", tc.window, tc.sign, tc.verify, err, tc.want)
			continue
		}
		if tc.want == nil {
			// Still remembered while it could be accepted.
			if err := receiver.verify(c, testHop, dst); !errors.Is(err, errCookieReplay) {
				t.Errorf("window %v: replay: %v, want %v", tc.window, err, errCookieReplay)
			}
		}
	}
}

// Nonces are remembered while their cookies could be accepted, not until
// the map is full: a relay with little traffic does not grow its map to
// max over days, and a burst's memory goes when the burst is over.
func TestCookieSeenForgetsExpired(t *testing.T) {
	a, clk := testAuth(testKey)
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	for i := range 1000 {
		if err := a.verify(a.cookie(testHop, dst), testHop, dst); err != nil {
			t.Fatalf("cookie %d: %v", i, err)
		}
	}
	live := a.cookie(testHop, dst)
	for _, after := range []time.Duration{31 * time.Second, 45 * time.Second} {
		clk.set(t0.Add(after))
		c := a.cookie(testHop, dst)
		if err := a.verify(c, testHop, dst); err != nil {
			t.Fatalf("%v later: %v", after, err)
		}
		if after == 31*time.Second {
			live = c
		}
	}
	if len(a.seen) > 2 {
		t.Errorf("seen holds %d nonces 45 s after a burst of 1000, want the 2 still live", len(a.seen))
	}
	if err := a.verify(live, testHop, dst); !errors.Is(err, errCookieReplay) {
		t.Errorf("a live nonce was forgotten: verify = %v, want %v", err, errCookieReplay)
	}
}

// A pipelined cookie that authenticates but is stale or replayed is
// refused as such, as a plain one is, not as one that does not
// authenticate: a relay's log then tells clock skew or a replay from a
// wrong key.
func TestPipelinedCookieRefusalReason(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	sender, sclk := testAuth(testKey)
	receiver, _ := testAuth(testKey)
	sclk.set(t0.Add(-time.Hour))
	if _, err := receiver.verifyHop(sender.pipelinedCookie(testHop, dst), testHop, dst); !errors.Is(err, errCookieStale) {
		t.Errorf("stale pipelined cookie: %v, want %v", err, errCookieStale)
	}
	sclk.set(t0)
	c := sender.pipelinedCookie(testHop, dst)
	if _, err := receiver.verifyHop(c, testHop, dst); err != nil {
		t.Fatalf("pipelined cookie: %v", err)
	}
	if _, err := receiver.verifyHop(c, testHop, dst); !errors.Is(err, errCookieReplay) {
		t.Errorf("replayed pipelined cookie: %v, want %v", err, errCookieReplay)
	}
}

// A reload that narrows the window and a later one that widens it again do
// not reopen replays: a nonce is kept for the widest window in force, so a
// cookie taken before is still known when the wider window makes it
// acceptable again. Both ways of forgetting nonces are checked: the sweep
// once a window, and the one when seen is full.
func TestCookieReplayAcrossWindowChange(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	for _, full := range []bool{false, true} {
		a, clk := testAuth(testKey)
		c := a.cookie(testHop, dst)
		if err := a.verify(c, testHop, dst); err != nil {
			t.Fatal(err)
		}
		if full {
			// A nonce that expires before the next one comes, so there is
			// room again once seen is full and has forgotten the expired.
			a.max = 2
			old, oclk := testAuth(testKey)
			oclk.set(t0.Add(-29 * time.Second))
			if err := a.verify(old.cookie(testHop, dst), testHop, dst); err != nil {
				t.Fatal(err)
			}
		}
		a.window.Store(int64(10 * time.Second)) // reloaded
		clk.set(t0.Add(15 * time.Second))
		if err := a.verify(a.cookie(testHop, dst), testHop, dst); err != nil {
			t.Fatal(err)
		}
		a.window.Store(int64(30 * time.Second)) // reloaded back
		clk.set(t0.Add(16 * time.Second))
		if err := a.verify(c, testHop, dst); !errors.Is(err, errCookieReplay) {
			t.Errorf("full %v: replay after the window narrowed and widened again: %v, want %v", full, err, errCookieReplay)
		}
	}
}

// FuzzVerifyCookie: whatever a Cookie TLV holds, verifying it neither
// panics nor passes unless it is a cookie this key signed (the seeds hold
// genuine ones, which pass once); seen stays within max.
func FuzzVerifyCookie(f *testing.F) {
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	signer, _ := testAuth(testKey)
	f.Add(signer.cookie(testHop, dst), false)
	f.Add(signer.pipelinedCookie(testHop, dst), false)
	f.Add(signer.poolCookie(testHop), true)
	f.Add([]byte{}, false)
	f.Add(make([]byte, cookieLen), true)
	f.Add(make([]byte, 4*255), false)
	f.Fuzz(func(t *testing.T, c []byte, pool bool) {
		a, _ := testAuth(testKey)
		a.max = 4
		d := dst
		var err error
		if pool {
			d = netip.AddrPort{}
			err = a.verifyPool(c, testHop)
		} else {
			_, err = a.verifyHop(c, testHop, d)
		}
		genuine := func(label string) bool {
			return len(c) == cookieLen && bytes.Equal(c[12:], a.mac(label, binary.BigEndian.Uint32(c), c[4:12], testHop, d))
		}
		if err == nil && !genuine(labelHop) && !genuine(labelPipelined) && !genuine(labelPool) {
			t.Fatalf("cookie % x verified", c)
		}
		if len(a.seen) > a.max {
			t.Fatalf("seen holds %d, max %d", len(a.seen), a.max)
		}
	})
}
