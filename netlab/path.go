package netlab

import (
	"fmt"
	"time"
)

// PathLeg is one hop of a path through a topology, in the path's direction.
type PathLeg struct {
	From, To   string
	Forward    time.Duration // one-way delay From→To
	Back       time.Duration // one-way delay To→From
	RateToward Rate          // rate To→From: the direction a download flows
}

// PathBetween returns the legs of the shortest path from node from to node
// to (by hop count, the first link found between two neighbors).
func (t *Topology) PathBetween(from, to string) ([]PathLeg, error) {
	if t.node(from) == nil || t.node(to) == nil {
		return nil, fmt.Errorf("topology %s: no node %q or %q", t.Name, from, to)
	}
	prev := map[string]int{from: -1} // node → index of the link that reached it
	queue := []string{from}
	for len(queue) > 0 && prev[to] == 0 && to != from {
		n := queue[0]
		queue = queue[1:]
		for i, l := range t.Links {
			var m string
			switch n {
			case l.A:
				m = l.B
			case l.B:
				m = l.A
			default:
				continue
			}
			if _, seen := prev[m]; !seen {
				prev[m] = i
				queue = append(queue, m)
			}
		}
	}
	if _, ok := prev[to]; !ok {
		return nil, fmt.Errorf("topology %s: no path from %s to %s", t.Name, from, to)
	}
	var legs []PathLeg
	for n := to; n != from; {
		l := t.Links[prev[n]]
		leg := PathLeg{From: l.A, To: l.B, Forward: time.Duration(l.Delay.AB), Back: time.Duration(l.Delay.BA), RateToward: l.Rate.BA}
		if l.A == n { // the link runs against the path
			leg = PathLeg{From: l.B, To: l.A, Forward: time.Duration(l.Delay.BA), Back: time.Duration(l.Delay.AB), RateToward: l.Rate.AB}
		}
		legs = append([]PathLeg{leg}, legs...)
		n = leg.From
	}
	return legs, nil
}
