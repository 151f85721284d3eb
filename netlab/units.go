package netlab

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"halfway/strictyaml"
)

// Duration is a time.Duration written like 16.35ms, 500us or 1.5s.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.ReplaceAll(string(b), "µ", "u"))
	if err != nil || v < 0 {
		return fmt.Errorf("want a duration like 10ms")
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
func (d Duration) String() string               { return time.Duration(d).String() }

// Rate is a link rate in bit/s, written like 100mbit, 1gbit, 512kbit or 8000bit
// (a /s or bps suffix is accepted too).
type Rate uint64

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
	{"gbps", 1e9}, {"mbps", 1e6}, {"kbps", 1e3}, {"bps", 1},
}

func (r *Rate) UnmarshalText(b []byte) error {
	s := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(string(b))), "/s")
	if s == "unlimited" || s == "0" {
		*r = 0
		return nil
	}
	for _, u := range rateUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || !(v > 0) || math.IsInf(v, 0) || v*u.mult < 1000 || v*u.mult > 1e12 { // !(v > 0): NaN too
				break
			}
			*r = Rate(v * u.mult)
			return nil
		}
	}
	return fmt.Errorf("want a rate like 100mbit (1kbit to 1000gbit, or unlimited)")
}

func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r Rate) String() string {
	switch {
	case r == 0:
		return "unlimited"
	case r%1e9 == 0:
		return fmt.Sprintf("%dgbit", r/1e9)
	case r%1e6 == 0:
		return fmt.Sprintf("%dmbit", r/1e6)
	case r%1e3 == 0:
		return fmt.Sprintf("%dkbit", r/1e3)
	}
	return fmt.Sprintf("%dbit", uint64(r))
}

// Percent is a probability written as a percentage like 0.1%.
type Percent float64

func (p *Percent) UnmarshalText(b []byte) error {
	num, ok := strings.CutSuffix(strings.TrimSpace(string(b)), "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if !ok || err != nil || !(v >= 0 && v <= 100) { // NaN fails both
		return fmt.Errorf("want a percentage like 0.1%%")
	}
	*p = Percent(v / 100)
	return nil
}

func (p Percent) MarshalText() ([]byte, error) { return []byte(p.String()), nil }
func (p Percent) String() string {
	return strconv.FormatFloat(float64(p)*100, 'g', -1, 64) + "%"
}

// QueueLimit bounds a drop-tail queue by bytes (64KB, 1MiB, 1500B) or by the
// time its content takes to serialize (50ms).
type QueueLimit struct {
	Bytes int
	Time  time.Duration
}

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1},
}

func (q *QueueLimit) UnmarshalText(b []byte) error {
	s := strings.ToLower(strings.TrimSpace(string(b)))
	if s == "default" || s == "0" {
		*q = QueueLimit{}
		return nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		*q = QueueLimit{Time: d}
		return nil
	}
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err == nil && v*u.mult >= 1 && v*u.mult <= 1<<31 {
				*q = QueueLimit{Bytes: int(v * u.mult)}
				return nil
			}
			break
		}
	}
	return fmt.Errorf("want a queue limit like 256KB or 50ms")
}

func (q QueueLimit) MarshalText() ([]byte, error) { return []byte(q.String()), nil }
func (q QueueLimit) String() string {
	switch {
	case q.Time > 0:
		return q.Time.String()
	case q.Bytes > 0:
		return strconv.Itoa(q.Bytes) + "B"
	}
	return "default"
}

// PerDir holds a link setting for each direction: AB from node a to node b,
// BA back. In YAML it is written once for both directions (delay: 10ms) or
// per direction (delay: {ab: 20ms, ba: 5ms}).
type PerDir[T any] struct {
	AB, BA T
}

// Both returns a PerDir with the same value both ways.
func Both[T any](v T) PerDir[T] { return PerDir[T]{v, v} }

func (p *PerDir[T]) UnmarshalYAMLNode(d *strictyaml.Decoder, n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		d.Decode(n, &p.AB)
		p.BA = p.AB
		return nil
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if seen[k.Value] {
			d.Errorf(k, "duplicate direction")
			continue
		}
		seen[k.Value] = true
		switch k.Value {
		case "ab":
			d.DecodeField("ab", v, &p.AB)
		case "ba":
			d.DecodeField("ba", v, &p.BA)
		default:
			d.Errorf(k, "unknown direction: want ab or ba")
		}
	}
	return nil
}
