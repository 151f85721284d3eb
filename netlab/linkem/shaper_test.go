package linkem

import (
	"math"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const ms = int64(time.Millisecond)

func TestShaperSchedule(t *testing.T) {
	type arrival struct {
		at   int64
		size int
	}
	type want struct {
		due int64
		v   Verdict
	}
	tests := []struct {
		name string
		p    Params
		in   []arrival
		want []want
	}{
		{
			name: "delay only keeps spacing",
			p:    Params{Delay: 10 * time.Millisecond},
			in:   []arrival{{0, 1500}, {1, 1500}, {5 * ms, 60000}},
			want: []want{{10 * ms, Pass}, {10*ms + 1, Pass}, {15 * ms, Pass}},
		},
		{
			name: "sub-millisecond delay",
			p:    Params{Delay: 250 * time.Microsecond},
			in:   []arrival{{1000, 100}},
			want: []want{{1000 + 250_000, Pass}},
		},
		{
			// 1500 bytes at 12 Mbit/s take exactly 1 ms to serialize.
			name: "rate serializes back to back",
			p:    Params{Rate: 12_000_000, Delay: 5 * time.Millisecond},
			in:   []arrival{{0, 1500}, {0, 1500}, {0, 1500}, {10 * ms, 1500}},
			want: []want{{6 * ms, Pass}, {7 * ms, Pass}, {8 * ms, Pass}, {16 * ms, Pass}},
		},
		{
			// Queue of 3000 bytes: the third packet would wait behind 2 ms
			// (3000 bytes) of backlog plus itself, so it is dropped; once the
			// backlog drains the fourth fits again.
			name: "drop tail by bytes",
			p:    Params{Rate: 12_000_000, QueueBytes: 3000},
			in:   []arrival{{0, 1500}, {0, 1500}, {0, 1500}, {1 * ms, 1500}},
			want: []want{{1 * ms, Pass}, {2 * ms, Pass}, {0, DropQueue}, {3 * ms, Pass}},
		},
		{
			name: "drop tail by time",
			p:    Params{Rate: 12_000_000, QueueTime: 2 * time.Millisecond},
			in:   []arrival{{0, 1500}, {0, 1500}, {0, 1500}},
			want: []want{{1 * ms, Pass}, {2 * ms, Pass}, {0, DropQueue}},
		},
		{
			name: "everything lost",
			p:    Params{Loss: 1, Delay: time.Millisecond},
			in:   []arrival{{0, 100}, {1, 100}},
			want: []want{{0, DropLoss}, {0, DropLoss}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewShaper(tt.p)
			for i, a := range tt.in {
				due, v := s.Admit(a.at, a.size)
				if v != tt.want[i].v || (v == Pass && due != tt.want[i].due) {
					t.Errorf("packet %d: got (%d, %v), want (%d, %v)", i, due, v, tt.want[i].due, tt.want[i].v)
				}
			}
		})
	}
}

func TestShaperJitterKeepsOrder(t *testing.T) {
	s := NewShaper(Params{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond, Seed: 1})
	var last int64
	spread := map[bool]int{}
	// Packets 20 ms apart never catch up with each other, so jitter shows
	// both ways; 0.1 ms apart they queue behind the latest one.
	for i := range 10000 {
		at := int64(i) * 20 * ms
		if i >= 5000 {
			at = 5000*20*ms + int64(i)*100_000
		}
		due, v := s.Admit(at, 1500)
		if v != Pass {
			t.Fatalf("packet %d dropped", i)
		}
		if due < last {
			t.Fatalf("packet %d due %d before previous %d", i, due, last)
		}
		if d := due - at; d < 5*ms || d > 15*ms+100_000 {
			t.Fatalf("packet %d delayed %v, outside delay±jitter", i, time.Duration(d))
		}
		if i < 5000 {
			spread[due-at > 10*ms]++
		}
		last = due
	}
	if spread[true] == 0 || spread[false] == 0 {
		t.Fatalf("jitter never spread delays both ways: %v", spread)
	}
}

func TestShaperJitterReorders(t *testing.T) {
	s := NewShaper(Params{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond, Reorder: true, Seed: 1})
	var last int64
	reordered := 0
	for i := range 1000 {
		due, _ := s.Admit(int64(i)*100_000, 1500)
		if due < last {
			reordered++
		}
		last = due
	}
	if reordered == 0 {
		t.Fatal("reorder allowed but no packet overtook another")
	}
}

// TestShaperLossRate checks the loss ratio against 99.9% binomial bounds.
func TestShaperLossRate(t *testing.T) {
	for _, loss := range []float64{0.001, 0.01, 0.1, 0.5} {
		s := NewShaper(Params{Loss: loss, Seed: 42})
		const n = 200000
		lost := 0
		for i := range n {
			if _, v := s.Admit(int64(i), 1500); v == DropLoss {
				lost++
			}
		}
		mean := n * loss
		sd := math.Sqrt(n * loss * (1 - loss))
		if math.Abs(float64(lost)-mean) > 3.3*sd {
			t.Errorf("loss %v: %d of %d lost, want %.0f ± %.0f", loss, lost, n, mean, 3.3*sd)
		}
	}
}

// TestShaperRateLongRun checks that a saturating sender gets the configured
// rate and that the queue bounds the delay.
func TestShaperRateLongRun(t *testing.T) {
	p := Params{Rate: 100_000_000, QueueTime: 10 * time.Millisecond}
	s := NewShaper(p)
	var delivered int64
	var lastDue int64
	// Offer 200 Mbit/s for one second.
	const size = 1500
	for at := int64(0); at < int64(time.Second); at += size * 8 * 1e9 / 200_000_000 {
		due, v := s.Admit(at, size)
		if v == Pass {
			delivered += size
			if due-at > int64(p.QueueTime)+int64(time.Millisecond) {
				t.Fatalf("queueing delay %v beyond the 10ms limit", time.Duration(due-at))
			}
			lastDue = due
		}
	}
	got := float64(delivered*8) / (float64(lastDue) / 1e9)
	if got < 0.99e8 || got > 1.01e8 {
		t.Fatalf("delivered %.1f Mbit/s, want 100", got/1e6)
	}
}

func TestQueueLimitDefaults(t *testing.T) {
	tests := []struct {
		p    Params
		want int64
	}{
		{Params{}, 0},
		{Params{Rate: 1_000_000}, MinQueueBytes},
		{Params{Rate: 1_000_000_000}, 12_500_000},
		{Params{Rate: 1_000_000_000, QueueBytes: 1000}, 1000},
		{Params{Rate: 8_000_000, QueueTime: time.Second, QueueBytes: 5000}, 5000},
		{Params{Rate: 8_000_000, QueueTime: time.Millisecond, QueueBytes: 5000}, 1000},
	}
	for _, tt := range tests {
		if got := tt.p.queueLimitBytes(); got != tt.want {
			t.Errorf("%+v: limit %d, want %d", tt.p, got, tt.want)
		}
	}
}

func TestParamsValidate(t *testing.T) {
	bad := []Params{{Delay: -1}, {Jitter: -1}, {Loss: 1.5}, {Loss: -0.1}, {QueueBytes: -1}, {QueueTime: -1}}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v: no error", p)
		}
	}
	if err := (Params{Delay: time.Second, Loss: 1, Rate: 1}).Validate(); err != nil {
		t.Errorf("valid params: %v", err)
	}
}

func TestSleeperLateness(t *testing.T) {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wake)
	s := sleeper{wake: wake}
	stop := make(chan struct{})
	for range 20 {
		due := monoNow() + int64(300*time.Microsecond)
		if !s.until(due, stop) {
			t.Fatal("until returned false without stop")
		}
	}
	if s.late < 0 || s.late > maxLate {
		t.Fatalf("lateness estimate %d out of range", s.late)
	}
	close(stop)
	unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	start := time.Now()
	if s.until(monoNow()+int64(time.Minute), stop) {
		t.Fatal("until returned true after stop")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("a closing wire's sleeper slept on")
	}
}

func TestRTPriority(t *testing.T) {
	for _, tc := range []struct {
		rate uint64
		want uint32
	}{
		{0, 10}, {10e9, 10}, {20e9, 10}, {5e9, 11}, {1e9, 14}, {200e6, 16}, {100e6, 17}, {8e6, 21}, {1, 40},
	} {
		if got := rtPriority(tc.rate); got != tc.want {
			t.Errorf("rtPriority(%d) = %d, want %d", tc.rate, got, tc.want)
		}
	}
}
