// Package model predicts the time to first byte (TTFB) and time to complete
// (TTC) of an HTTP-like transfer over a path split by TCP relays: the client
// sends a small request, the server answers with Size bytes. It is the
// analytic model of Miniproxy (Siracusano et al., HotMiddlebox 2016, §3),
// generalised to per-leg delays and rates, and extended with the connection
// improvements of KTCP (Kernels of Splitting TCP in the Clouds, §2–3).
//
// # The paper's model
//
// D is the one-way end-to-end delay, X_i the one-way delay of leg i of a
// chain of N relays (N+1 legs, ΣX_i = D). The three-way handshake takes 3D
// and "the TTFB is equal to 2 RTTs or 4D" end to end. With naive split the
// handshakes run in series, "TTFB = 3X_1 + 3X_2 + D = 4D", and for N relays
// "(N+1)·3·D/(N+1) + D = 4D". With Early SYN Forwarding (ESF) each relay
// forwards the client's SYN at once:
//
//	TTFB = 2D + 2·max(X_1; X_2)                                  (1)
//	TTFB = 2D + 2·max(X_i)                                       (2)
//
// Slow start is modelled in slots of one RTT = 2D, numbered k:
//
//	S_k    = 2^k·IW                                              (3)
//	B_k    = 2^k·IW·MSS [bytes]                                  (4)
//	R_k    = B_k·8/RTT = 2^k·IW·MSS·8/(2D) [b/s]                 (5)
//	Btot_k = Σ_{i=0..k} B_i [bytes]                              (6)
//	Ra_k   = (1/(k+1))·Σ_{i=0..k} R_i = IW·MSS·8/RTT·(2^{k+1}−1)/(k+1)  (7)
//	TTC_k  = TTFB + k·RTT = TTFB + k·2D [s]                      (8)
//	TTC_k  = 2D + 2D + k·2D [s]           (no ESF, TTFB = 4D)    (9)
//	TTC_k  = TTFB + k·2·max(X_i) = 2D + 2·max(X_i) + k·2·max(X_i)   (10)
//	TTC_k  = 2D + 2D/(N+1) + k·2D/(N+1)   (X_i = D/(N+1))        (11)
//
// where TTC_k is the completion time of a transfer of Btot_k bytes, i.e. k
// is the smallest slot with Btot_k ≥ Size.
//
// # How this package computes them
//
// The closed forms above hold only for unlimited link rates and equal initial
// windows, so Predict evaluates the same mechanisms event by event instead:
//
//   - Request phase (TTFB). For each leg it tracks when the leg is opened
//     (SYN sent), when it can carry data (SYN-ACK back: open + 2X_i), and when
//     the request crosses it: a node sends the request as soon as it holds it
//     and its outgoing leg is ready. Without ESF a relay opens the next leg
//     only once it holds the request (its own handshake completed, the
//     request riding on the ACK, as in the paper); with ESF it opens the next
//     leg when the SYN arrives. This reproduces 4D and eq. (2) exactly, and
//     for arbitrary X_i gives "request at server = D + 2·max X_i" with ESF.
//     TTFB is the arrival at the client of the first response segment, the
//     server answering the moment the request arrives.
//   - Data phase (TTC). Each connection (one per leg when split, one for the
//     whole path end to end) runs slow start clocked by its ACKs: a sender
//     may have IW + (ACKs received) segments outstanding, so every ACK frees
//     two segments and the window doubles each round trip, as in eq. (3)–(4).
//     Segments are serialized at each link's rate and stored and forwarded at
//     every hop; a relay forwards each segment as soon as it has received it,
//     so "the slow start phases in each part proceed in parallel" (§3). With
//     unlimited rates and equal IW this gives eq. (8)–(11) exactly; with
//     finite rates the bottleneck's serialization bounds the throughput.
//
// # Assumptions
//
//   - No loss; no queueing except serialization of a flow's own segments
//     behind one another (no cross traffic); processing time is zero.
//   - Only payload bytes are serialized (no header overhead); SYN, SYN-ACK,
//     ACK and the relay-pool destination header take no serialization time.
//   - ACK clocking without delayed ACKs (the paper's doubling per RTT): every
//     segment is acknowledged on arrival and raises cwnd by one segment.
//   - cwnd is not capped: once a window exceeds a link's bandwidth-delay
//     product the link stays busy, which gives the same completion time as a
//     window capped at the BDP; relays have unbounded buffers, and a leg that
//     is starved by a slower upstream leg keeps growing its window (Linux
//     grows cwnd in slow start while it is under twice the data in flight),
//     so it never delays forwarding.
//   - The request fits in the initial window and is stored and forwarded
//     whole by each node. The response is Size payload bytes in segments of
//     MSS bytes (the last one shorter). TTC is the arrival of its last byte
//     at the client, measured from the client's SYN; closing is not counted.
//   - End to end the server's initial window (that of the last leg) is used.
//   - Relays learn the destination from the SYN (transparent relays, or
//     Miniproxy's TCP option, or a Convert TLV in the SYN): ESF is possible on
//     every relay. Explicit proxies that must read a SOCKS/HTTP request first
//     are not modelled.
//
// # Extensions beyond the papers
//
//   - Per-leg delays, link rates and initial windows (the paper has a single
//     RTT, rate and IW; its eq. (10) already allows per-leg X_i).
//   - Pool (KTCP improvement 3, "reusable connections"): a Relay leg needs no
//     handshake. When the SYN reaches the near relay it takes a pre-established
//     connection and sends the destination "in the very first bytes", so the
//     far relay learns of the flow X_i later, exactly when a forwarded SYN
//     would have arrived, and the request crosses the leg as soon as the near
//     relay holds it. The resulting TTFB is 2D + 2·max over the legs that
//     still handshake (client and server legs), i.e. the KTCP lower bound for
//     an unmodified client: one end-to-end RTT plus the client leg's RTT (the
//     server leg's handshake is hidden behind the request's transit unless it
//     is the longer of the two). KTCP's thread pool (improvement 2) only
//     removes processing jitter, which this model does not have.
//   - Turbo-Start (KTCP improvement 4): Relay legs start with
//     max(TurboIW, IW) segments; client- and server-facing legs are unchanged.
//     It does not change the TTFB, as KTCP observes.
//   - TFO (Options.TFO): a Relay leg that is not pooled may open with a Fast
//     Open SYN carrying the request (a cached cookie, 0-RTT). Since data sent
//     in a SYN must be in hand when the SYN leaves, the relay then defers the
//     SYN until it holds the request; with ESF it may instead forward the SYN
//     early without data. Predict takes whichever gives the earlier TTFB.
package model

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// Defaults.
const (
	DefaultMSS          = 1448 // bytes of payload per segment (Ethernet, timestamps on)
	DefaultIW           = 10   // segments, Linux's initial window (RFC 6928)
	DefaultTurboIW      = 100  // segments on relay–relay legs with Turbo-Start
	DefaultRequestBytes = 100  // bytes of the client's request

	// MaxSegments bounds the response (6 GB at DefaultMSS): Predict keeps
	// a few float64s per segment.
	MaxSegments = 1 << 22
)

// Leg is one hop of the path, client side first.
type Leg struct {
	Delay time.Duration // one way
	Rate  float64       // bit/s; 0 = unlimited
	IW    int           // initial window in segments; 0 = DefaultIW
	Relay bool          // both ends are relays: a pool or Turbo-Start applies
}

// Path is the sequence of legs from the client to the server. Every node
// between two legs is a relay in the split configurations (a plain router end
// to end).
type Path struct {
	Legs []Leg
	MSS  int // bytes; must be positive (EvenPath uses DefaultMSS)
}

// Config is a way of carrying the connection over the path.
type Config string

// The configurations, each adding one mechanism to the one before it from
// Split on.
const (
	E2E          Config = "e2e"            // one connection end to end
	Split        Config = "split"          // a connection per leg, handshakes in series
	ESF          Config = "esf"            // split with Early SYN Forwarding
	ESFPool      Config = "esf+pool"       // plus pre-established relay–relay connections
	ESFPoolTurbo Config = "esf+pool+turbo" // plus a large initial window on relay–relay legs
)

// Configs lists every configuration, from the slowest stack to the fastest.
func Configs() []Config {
	return []Config{E2E, Split, ESF, ESFPool, ESFPoolTurbo}
}

// ParseConfig returns the configuration named s.
func ParseConfig(s string) (Config, error) {
	c := Config(s)
	if !slices.Contains(Configs(), c) {
		return "", fmt.Errorf("model: unknown config %q (want one of %v)", s, Configs())
	}
	return c, nil
}

// Options tune Predict; the zero value takes the defaults.
type Options struct {
	TurboIW      int  // initial window of relay–relay legs with Turbo-Start; 0 = DefaultTurboIW
	RequestBytes int  // size of the client's request; 0 = DefaultRequestBytes
	TFO          bool // relay–relay legs without a pool may open with a 0-RTT Fast Open SYN
}

// Prediction is the model's answer for one configuration and size. Times
// run from the moment the client sends its SYN.
type Prediction struct {
	Config  Config
	Size    int           // response bytes
	Request time.Duration // the request reaches the server
	TTFB    time.Duration // the first response segment reaches the client
	TTC     time.Duration // the last response byte reaches the client
}

// Delay returns D, the one-way delay of the whole path.
func (p Path) Delay() time.Duration {
	var d time.Duration
	for _, l := range p.Legs {
		d += l.Delay
	}
	return d
}

// Validate reports the first problem with the path.
func (p Path) Validate() error {
	if len(p.Legs) == 0 {
		return errors.New("model: path has no legs")
	}
	if p.MSS <= 0 {
		return fmt.Errorf("model: MSS %d must be positive", p.MSS)
	}
	var d time.Duration
	for i, l := range p.Legs {
		switch {
		case l.Delay < 0:
			return fmt.Errorf("model: leg %d: negative delay %v", i, l.Delay)
		case l.Delay > math.MaxInt64-d:
			return fmt.Errorf("model: leg %d: the path's one-way delay overflows time.Duration", i)
		case math.IsNaN(l.Rate) || l.Rate < 0:
			return fmt.Errorf("model: leg %d: rate %v must be ≥ 0 bit/s (0 = unlimited)", i, l.Rate)
		case l.IW < 0:
			return fmt.Errorf("model: leg %d: negative initial window %d", i, l.IW)
		case l.Relay && i == 0:
			return fmt.Errorf("model: leg %d starts at the client and cannot be a relay–relay leg", i)
		case l.Relay && i == len(p.Legs)-1:
			return fmt.Errorf("model: leg %d ends at the server and cannot be a relay–relay leg", i)
		}
		d += l.Delay
	}
	return nil
}

// EvenPath splits a round-trip time evenly over relays+1 legs of the given
// rate (bit/s, 0 = unlimited), as in Miniproxy's Fig. 4: X_i = D/(N+1) with
// D = rtt/2. Legs between two relays are marked Relay. Nanoseconds that do
// not divide evenly go to the first legs, so the delays sum to rtt/2.
func EvenPath(rtt time.Duration, relays int, rate float64) Path {
	if relays < 0 {
		relays = 0
	}
	n := time.Duration(relays + 1)
	d := rtt / 2
	p := Path{MSS: DefaultMSS, Legs: make([]Leg, relays+1)}
	for i := range p.Legs {
		x := d / n
		if time.Duration(i) < d%n {
			x++
		}
		p.Legs[i] = Leg{Delay: x, Rate: rate, Relay: i > 0 && i < relays}
	}
	return p
}

// Predict returns the model's TTFB and TTC for a response of size bytes over
// path p with configuration c.
func Predict(p Path, c Config, size int, opt Options) (Prediction, error) {
	if err := p.Validate(); err != nil {
		return Prediction{}, err
	}
	if _, err := ParseConfig(string(c)); err != nil {
		return Prediction{}, err
	}
	if size <= 0 {
		return Prediction{}, fmt.Errorf("model: response size %d must be positive", size)
	}
	if n := (size-1)/p.MSS + 1; n > MaxSegments {
		return Prediction{}, fmt.Errorf("model: response of %d bytes is %d segments, more than %d", size, n, MaxSegments)
	}
	if opt.TurboIW < 0 {
		return Prediction{}, fmt.Errorf("model: negative TurboIW %d", opt.TurboIW)
	}
	if opt.RequestBytes < 0 {
		return Prediction{}, fmt.Errorf("model: negative RequestBytes %d", opt.RequestBytes)
	}
	if opt.TurboIW == 0 {
		opt.TurboIW = DefaultTurboIW
	}
	if opt.RequestBytes == 0 {
		opt.RequestBytes = DefaultRequestBytes
	}

	req := requestArrival(p, c, opt)
	first, last := respond(connections(p, c, opt), req, size, p.MSS)
	if last >= math.MaxInt64 { // also +Inf, from a rate so low that 8e9/rate overflows
		return Prediction{}, fmt.Errorf("model: TTC of %.3g s overflows time.Duration", last/1e9)
	}
	return Prediction{
		Config:  c,
		Size:    size,
		Request: dur(req),
		TTFB:    dur(first),
		TTC:     dur(last),
	}, nil
}

// Times are float64 nanoseconds: exact for sums of time.Durations, with
// fractions only from serialization.

func ns(d time.Duration) float64 { return float64(d) }

func dur(t float64) time.Duration { return time.Duration(math.Round(t)) }

// nsPerByte is the serialization time of one byte on a link of rate bit/s.
func nsPerByte(rate float64) float64 {
	if rate == 0 {
		return 0
	}
	return 8e9 / rate
}

func iw(l Leg) int {
	if l.IW == 0 {
		return DefaultIW
	}
	return l.IW
}

// progress is where the request stands at a node: r, when the node holds the
// request; l, when it learned of the flow (the SYN, or a pool's destination
// header, arrived), which is when it opens its next leg under ESF.
type progress struct{ r, l float64 }

// requestArrival returns when the request reaches the server.
func requestArrival(p Path, c Config, opt Options) float64 {
	reqSer := func(l Leg) float64 { return float64(opt.RequestBytes) * nsPerByte(l.Rate) }

	if c == E2E {
		// SYN and SYN-ACK take 2D, then the request rides on the ACK: the
		// handshake "will take 3D" and, once the answer is back, "the TTFB
		// is equal to 2 RTTs or 4D" (§3).
		t := 2 * ns(p.Delay())
		for _, l := range p.Legs {
			t += ns(l.Delay) + reqSer(l)
		}
		return t
	}

	esf := c != Split
	pool := c == ESFPool || c == ESFPoolTurbo
	// With TFO a relay may choose between two ways of opening a leg whose
	// consequences differ downstream, so keep every (r, l) not dominated.
	front := []progress{{0, 0}}
	for _, leg := range p.Legs {
		x, rs := ns(leg.Delay), reqSer(leg)
		var next []progress
		for _, s := range front {
			if pool && leg.Relay {
				// Pre-established: the destination header leaves when the
				// SYN arrives, the request whenever the relay has it.
				o := s.l
				next = append(next, progress{max(s.r, o) + x + rs, o + x})
				continue
			}
			// Three-way handshake. Without ESF the node opens the leg once
			// it holds the request (for the client, at once; for a relay,
			// after its own handshake completes: handshakes in series, 3X_i
			// each); with ESF when the SYN arrives. The request leaves once
			// the node holds it and the SYN-ACK is back (open + 2X_i).
			o := s.r
			if esf {
				o = s.l
			}
			next = append(next, progress{max(s.r, o+2*x) + x + rs, o + x})
			if opt.TFO && leg.Relay {
				// 0-RTT: the SYN leaves with the request in it.
				a := s.r + x + rs
				next = append(next, progress{a, a})
			}
		}
		front = pareto(next)
	}
	return front[0].r
}

// pareto keeps the points not dominated in both coordinates, sorted by r.
func pareto(ps []progress) []progress {
	slices.SortFunc(ps, func(a, b progress) int {
		if a.r != b.r {
			if a.r < b.r {
				return -1
			}
			return 1
		}
		switch {
		case a.l < b.l:
			return -1
		case a.l > b.l:
			return 1
		}
		return 0
	})
	out := ps[:0]
	for _, q := range ps {
		if len(out) == 0 || q.l < out[len(out)-1].l {
			out = append(out, q)
		}
	}
	return out
}

type hop struct{ delay, nsPerByte float64 }

// conn is one TCP connection carrying the response, its hops in the
// direction of the data (server to client).
type conn struct {
	hops     []hop
	iw       int
	ackDelay float64 // ACKs cross the connection's hops back, unserialized
}

// connections lists the connections the response crosses, server side first.
func connections(p Path, c Config, opt Options) []conn {
	n := len(p.Legs)
	if c == E2E {
		e := conn{iw: iw(p.Legs[n-1]), ackDelay: ns(p.Delay())}
		for i := n - 1; i >= 0; i-- {
			l := p.Legs[i]
			e.hops = append(e.hops, hop{ns(l.Delay), nsPerByte(l.Rate)})
		}
		return []conn{e}
	}
	cs := make([]conn, 0, n)
	for i := n - 1; i >= 0; i-- {
		l := p.Legs[i]
		w := iw(l)
		if c == ESFPoolTurbo && l.Relay {
			w = max(w, opt.TurboIW)
		}
		cs = append(cs, conn{
			hops:     []hop{{ns(l.Delay), nsPerByte(l.Rate)}},
			iw:       w,
			ackDelay: ns(l.Delay),
		})
	}
	return cs
}

// respond sends size bytes from the server at time start through the
// connections and returns when the first and the last segment reach the
// client.
func respond(cs []conn, start float64, size, mss int) (first, last float64) {
	n := (size-1)/mss + 1 // size+mss−1 would overflow for an MSS near math.MaxInt
	lastBytes := float64(size - (n-1)*mss)
	avail := make([]float64, n) // when segment j is at the connection's sender
	for j := range avail {
		avail[j] = start
	}
	arrive := make([]float64, n)
	ack := make([]float64, n)
	for _, c := range cs {
		free := make([]float64, len(c.hops)) // when each link finishes its last segment
		for j := range n {
			t := avail[j]
			// Slow start with ACK clocking: after m ACKs cwnd is IW+m and
			// m segments are out of flight, so segments up to IW+2m−1 may be
			// sent; segment j waits for ACK number (j−IW)/2.
			if j >= c.iw {
				t = max(t, ack[(j-c.iw)/2])
			}
			b := float64(mss)
			if j == n-1 {
				b = lastBytes
			}
			for h, hp := range c.hops {
				t = max(t, free[h]) + b*hp.nsPerByte
				free[h] = t
				t += hp.delay
			}
			arrive[j] = t
			ack[j] = t + c.ackDelay
		}
		avail, arrive = arrive, avail
	}
	return avail[0], avail[n-1]
}
