// Package netlab builds emulated WANs out of network namespaces: hosts,
// point-to-point links with delay, jitter, rate, loss and a drop-tail queue
// per direction, addresses, routes and a hosts file per host, so that
// unmodified kernel TCP stacks talk across realistic paths on one machine.
//
// A topology is usually a YAML file:
//
//	name: ktcp
//	nodes: [client, rc, rs, server]
//	links:
//	  - {a: client, b: rc, delay: 16.35ms, rate: 100mbit}
//	  - {a: rc, b: rs, delay: 107.5ms, rate: 1gbit, loss: 0.1%}
//	  - {a: rs, b: server, delay: {ab: 13ms, ba: 12ms}, rate: 100mbit}
//
// and a lab is brought up from Go with
//
//	t, err := netlab.LoadTopology("ktcp.yaml")
//	lab, err := netlab.Up(ctx, t, netlab.Options{})
//	defer lab.Close()
//	ln, err := lab.Host("server").Listen("tcp", ":80")
//
// Every namespace and file a lab creates is named with Prefix; a lab whose
// owner died is removed by the next Up, Down or Sweep. The link emulators
// are in package linkem; package labtest brings labs up inside tests.
package netlab
