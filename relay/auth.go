package relay

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// A hop cookie authenticates one relay-to-relay hop: it rides in the
// Convert Cookie TLV next to the Connect TLV it covers.
//
//	0      4        12                28
//	| time | nonce  | HMAC-SHA256[:16] |
//
// time is Unix seconds; the MAC covers a label, time, nonce, the relay the
// hop is addressed to and the destination it asks for, so a cookie cannot be
// moved to another destination or replayed to another relay of the fleet,
// and a nonce is accepted once within the time window.
const cookieLen = 28

var (
	errCookieMissing = errors.New("no hop cookie")
	errCookieBad     = errors.New("hop cookie does not authenticate")
	errCookieStale   = errors.New("hop cookie outside the time window")
	errCookieReplay  = errors.New("hop cookie replayed")
)

type hopAuth struct {
	key    []byte
	window atomic.Int64 // time.Duration; a reload may change it
	now    func() time.Time

	// identities are addresses peers use for this relay besides its own
	// socket address (auth.advertise).
	identities []netip.AddrPort

	// since (unix seconds) is when seen began: a cookie signed before it
	// may have been used already, by this relay before it restarted.
	since int64

	mu    sync.Mutex
	seen  map[[8]byte]int64 // nonce → its cookie's timestamp (unix seconds)
	max   int               // bound on seen, so a flood cannot grow it
	swept int64             // when seen last dropped its expired nonces (unix seconds)
	peak  int               // the most seen held since it was last made anew
	// keep is the widest window (seconds) a cookie was verified under:
	// nonces are forgotten by it, so that a reload narrowing the window
	// and another widening it again do not make a taken cookie new.
	keep int64
}

func newHopAuth(key []byte, window time.Duration) *hopAuth {
	a := &hopAuth{key: key, now: time.Now, since: time.Now().Unix(), seen: map[[8]byte]int64{}, max: 1 << 20}
	a.window.Store(int64(window))
	return a
}

// windowS is the accepted difference of timestamps in seconds: the window
// rounded up, since timestamps are whole seconds, so a cookie verified
// within the window of its signing (0.2 s later, across a second's end)
// is not refused.
func (a *hopAuth) windowS() int64 {
	return (a.window.Load() + int64(time.Second) - 1) / int64(time.Second)
}

// The labels keep a pool greeting's cookie from being taken for a hop's
// and the other way round.
//
// A pipelining sender (a transparent flow, whose client bytes follow the
// Connect without waiting for the answer) signs with labelPipelined: the
// receiving relay then sends its answer with the server's first bytes.
const (
	labelHop       = "halfway hop v2"
	labelPipelined = "halfway hop v2 pipelined"
	labelPool      = "halfway pool v1"
)

func (a *hopAuth) mac(label string, ts uint32, nonce []byte, hop, dst netip.AddrPort) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(label))
	var b [4 + 8 + 2*18]byte
	binary.BigEndian.PutUint32(b[0:], ts)
	copy(b[4:], nonce)
	for i, ap := range []netip.AddrPort{hop, dst} {
		ip := ap.Addr().Unmap().As16()
		copy(b[12+18*i:], ip[:])
		binary.BigEndian.PutUint16(b[28+18*i:], ap.Port())
	}
	m.Write(b[:])
	return m.Sum(nil)[:16]
}

// cookie makes a fresh cookie for a hop sent to the relay at hop, asking
// it to connect to dst.
func (a *hopAuth) cookie(hop, dst netip.AddrPort) []byte {
	return a.labeled(labelHop, hop, dst)
}

// pipelinedCookie is cookie for a sender that does not wait for the answer.
func (a *hopAuth) pipelinedCookie(hop, dst netip.AddrPort) []byte {
	return a.labeled(labelPipelined, hop, dst)
}

// poolCookie makes the cookie of a pooled connection's greeting to the
// relay at hop; it names no destination.
func (a *hopAuth) poolCookie(hop netip.AddrPort) []byte {
	return a.labeled(labelPool, hop, netip.AddrPort{})
}

func (a *hopAuth) labeled(label string, hop, dst netip.AddrPort) []byte {
	c := make([]byte, cookieLen)
	ts := uint32(a.now().Unix())
	binary.BigEndian.PutUint32(c, ts)
	_, _ = rand.Read(c[4:12])
	copy(c[12:], a.mac(label, ts, c[4:12], hop, dst))
	return c
}

// verify checks a cookie received at the address hop asking for dst, and
// remembers its nonce.
func (a *hopAuth) verify(c []byte, hop, dst netip.AddrPort) error {
	_, err := a.verifyHop(c, hop, dst)
	return err
}

// verifyHop checks a hop cookie of either kind and tells whether its
// sender pipelines. A pipelined cookie that authenticates but is refused
// (stale, replayed) is refused for that reason, as a plain one is.
func (a *hopAuth) verifyHop(c []byte, hop, dst netip.AddrPort) (pipelined bool, err error) {
	err = a.verifyLabeled(labelHop, c, hop, dst)
	if errors.Is(err, errCookieBad) {
		if perr := a.verifyLabeled(labelPipelined, c, hop, dst); !errors.Is(perr, errCookieBad) {
			return perr == nil, perr
		}
	}
	return false, err
}

// verifyPool checks a pooled connection's greeting received at hop.
func (a *hopAuth) verifyPool(c []byte, hop netip.AddrPort) error {
	return a.verifyLabeled(labelPool, c, hop, netip.AddrPort{})
}

// c is nil when the message had no Cookie TLV: only then is the cookie
// missing. An empty TLV is a cookie that does not authenticate.
func (a *hopAuth) verifyLabeled(label string, c []byte, hop, dst netip.AddrPort) error {
	if c == nil {
		return errCookieMissing
	}
	if len(c) != cookieLen {
		return errCookieBad
	}
	ts := binary.BigEndian.Uint32(c)
	ok := hmac.Equal(c[12:], a.mac(label, ts, c[4:12], hop, dst))
	// Behind NAT, peers address this relay by a public address it cannot
	// see on its socket: each advertised address may sign too.
	a.mu.Lock()
	ids := a.identities
	a.mu.Unlock()
	for _, id := range ids {
		ok = ok || hmac.Equal(c[12:], a.mac(label, ts, c[4:12], id, dst))
	}
	if !ok {
		return errCookieBad
	}
	now, win := a.now().Unix(), a.windowS()
	if d := now - int64(ts); d > win || -d > win || int64(ts) < a.since {
		return errCookieStale
	}
	var nonce [8]byte
	copy(nonce[:], c[4:12])
	a.mu.Lock()
	defer a.mu.Unlock()
	// A nonce is remembered while its cookie could still be accepted,
	// judged with the window in force now, not when it was stored.
	if seenTS, ok := a.seen[nonce]; ok && seenTS+win >= now {
		return errCookieReplay
	}
	a.keep = max(a.keep, win)
	if now-a.swept > a.keep || len(a.seen) >= a.max {
		a.sweep(now)
	}
	if len(a.seen) >= a.max {
		// Every remembered nonce is still live: refusing is safer than forgetting.
		return errCookieReplay
	}
	a.seen[nonce] = int64(ts)
	a.peak = max(a.peak, len(a.seen))
	return nil
}

// sweep forgets the nonces whose cookies can no longer be accepted under
// the widest window (keep), once a window or when seen is full: else they
// would stay until seen filled, a relay with little traffic growing it to
// max (tens of MB) over days. A map does not shrink, so when the live
// nonces are under half the most it held, they move to a new one: a
// burst's memory goes when the burst is over. a.mu is held.
func (a *hopAuth) sweep(now int64) {
	for n, ts := range a.seen {
		if ts+a.keep < now {
			delete(a.seen, n)
		}
	}
	a.swept = now
	if len(a.seen) < a.peak/2 {
		live := make(map[[8]byte]int64, len(a.seen))
		for n, ts := range a.seen {
			live[n] = ts
		}
		a.seen, a.peak = live, len(live)
	}
}
