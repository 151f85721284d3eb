// Package linkem emulates a WAN link in user space: one-way delay with
// sub-millisecond precision, optional jitter, a serialization rate, random
// loss and a drop-tail queue, per direction.
//
// The kernel here has no netem, so a link is a "wire": a network namespace
// holding two veth ends with no addresses, and one AF_PACKET socket per end.
// Frames read on one end are scheduled by a Shaper and written, byte for byte,
// to the other end when due.
//
//	w, err := linkem.Open("l0a", "l0b", linkem.Params{Delay: 25 * time.Millisecond},
//		linkem.Params{Delay: 25 * time.Millisecond}, linkem.Options{})
//	if err != nil { ... }
//	defer w.Close()
//	go w.Run(ctx)
//
// Open must run in the wire's namespace (the sockets stay bound to it); Run
// and Close may run anywhere.
package linkem

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Params describes one direction of a link.
type Params struct {
	// Delay is the one-way propagation delay added to every packet.
	Delay time.Duration
	// Jitter adds a uniformly distributed offset in [-Jitter, +Jitter] to
	// Delay. Packets keep their order unless Reorder is set: a packet never
	// overtakes the one before it, so packets closer together than the
	// jitter's spread bunch toward the larger delays (netem does the same).
	Jitter  time.Duration
	Reorder bool
	// Rate is the serialization rate in bit/s of IP packets (the Ethernet
	// header of the veth is not counted: a WAN link has its own framing).
	// Zero means unlimited.
	Rate uint64
	// Loss is the probability in [0, 1] that a packet is lost after it was
	// serialized.
	Loss float64
	// QueueBytes and QueueTime bound the drop-tail queue in front of the
	// serializer; the smaller bound applies. With both zero and a rate set,
	// the queue holds DefaultQueueTime worth of the rate, at least
	// MinQueueBytes.
	QueueBytes int
	QueueTime  time.Duration
	// Seed seeds the random source for loss and jitter, so that runs are
	// repeatable; zero picks a random seed.
	Seed uint64
}

const (
	// DefaultQueueTime sizes the queue of a rate-limited direction when no
	// limit is configured.
	DefaultQueueTime = 100 * time.Millisecond
	// MinQueueBytes keeps slow links from having a queue smaller than a
	// burst of full-size packets.
	MinQueueBytes = 64 << 10
)

// Validate reports a parameter outside its domain.
func (p Params) Validate() error {
	switch {
	case p.Delay < 0 || p.Delay > MaxDelay:
		return fmt.Errorf("delay %v: want 0 to %v", p.Delay, MaxDelay)
	case p.Jitter < 0 || p.Jitter > MaxDelay:
		return fmt.Errorf("jitter %v: want 0 to %v", p.Jitter, MaxDelay)
	case !(p.Loss >= 0 && p.Loss <= 1): // NaN too

		return fmt.Errorf("loss %v is not a probability", p.Loss)
	case p.QueueBytes < 0:
		return fmt.Errorf("queue limit %d bytes is negative", p.QueueBytes)
	case p.QueueTime < 0:
		return fmt.Errorf("queue limit %v is negative", p.QueueTime)
	}
	return nil
}

// MaxDelay bounds a link's delay and jitter: far past any path on Earth,
// and far from the nanosecond clock's overflow.
const MaxDelay = time.Hour

// needsSegments tells whether packets must be cut to MTU size before
// scheduling: rate and loss act per packet on a real link.
func (p Params) needsSegments() bool { return p.Rate > 0 || p.Loss > 0 }

// queueLimitBytes is the effective drop-tail limit in bytes, or 0 for none.
func (p Params) queueLimitBytes() int64 {
	if p.Rate == 0 {
		return 0
	}
	limit := int64(0)
	if p.QueueBytes > 0 {
		limit = int64(p.QueueBytes)
	}
	if p.QueueTime > 0 {
		// At least a byte: a queue shorter than one byte's time is
		// nearly none, not the default.
		t := max(bytesIn(p.Rate, p.QueueTime), 1)
		if limit == 0 || t < limit {
			limit = t
		}
	}
	if limit == 0 {
		limit = max(bytesIn(p.Rate, DefaultQueueTime), MinQueueBytes)
	}
	return limit
}

func bytesIn(rate uint64, d time.Duration) int64 {
	return int64(float64(rate) / 8 * d.Seconds())
}

// Verdict is what a Shaper decided for one packet.
type Verdict uint8

const (
	Pass      Verdict = iota
	DropLoss          // lost on the link
	DropQueue         // the drop-tail queue was full
)

// Shaper schedules the packets of one direction. It is a pure function of
// arrival times and sizes (plus its random source), so it is tested with a
// fake clock; the wire feeds it kernel receive timestamps.
type Shaper struct {
	p        Params
	limit    int64 // queue limit in bytes, 0 = none
	rng      *rand.Rand
	linkFree int64 // time the serializer finishes its backlog (ns)
	lastDue  int64
}

// NewShaper returns a Shaper for p, which must be valid.
func NewShaper(p Params) *Shaper {
	seed := p.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Shaper{p: p, limit: p.queueLimitBytes(), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Admit schedules a packet of size bytes (IP packet length) that arrived at
// now (ns on any monotonic clock). It returns the time the packet is due at
// the far end, or why it was dropped.
func (s *Shaper) Admit(now int64, size int) (due int64, v Verdict) {
	depart := now
	if s.p.Rate > 0 {
		start := max(now, s.linkFree)
		if s.limit > 0 && start > now {
			backlog := int64(float64(start-now) * float64(s.p.Rate) / 8e9)
			if backlog+int64(size) > s.limit {
				return 0, DropQueue
			}
		}
		depart = start + int64(size)*8e9/int64(s.p.Rate)
		s.linkFree = depart
	}
	if s.p.Loss > 0 && s.rng.Float64() < s.p.Loss {
		return 0, DropLoss
	}
	due = depart + int64(s.p.Delay)
	if s.p.Jitter > 0 {
		due += s.rng.Int64N(2*int64(s.p.Jitter)+1) - int64(s.p.Jitter)
		due = max(due, depart)
	}
	if !s.p.Reorder {
		due = max(due, s.lastDue)
	}
	s.lastDue = max(s.lastDue, due)
	return due, Pass
}

// rtPriority is the SCHED_FIFO priority of a writer for a link of rate
// bit/s: 10 for an unlimited one, one more per halving of the rate below
// 10 Gbit/s, at most 40. Writers of equal priority never preempt each
// other, and a fast link's writer that falls behind a burst (a 1 Gbit/s
// burst costs more CPU than a 2-core machine has) does not sleep until it
// has caught up. A slower link costs less CPU per second, so letting it
// preempt the faster ones keeps it on time at little cost to them, as in
// rate-monotonic scheduling.
func rtPriority(rate uint64) uint32 {
	if rate == 0 {
		return 10
	}
	p := uint32(10)
	for r := uint64(10e9); r > rate && p < 40; r /= 2 {
		p++
	}
	return p
}
