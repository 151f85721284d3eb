package relay

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"halfway/datapath"
	"halfway/sockopt"
	"halfway/strictyaml"
)

// Config is a relay's configuration file.
type Config struct {
	Admin     AdminConfig      `yaml:"admin"`
	Log       LogConfig        `yaml:"log"`
	Auth      AuthConfig       `yaml:"auth"`
	Limits    Limits           `yaml:"limits"`
	Legs      LegsConfig       `yaml:"legs"`
	Listeners []ListenerConfig `yaml:"listeners"`
	Routes    []RouteConfig    `yaml:"routes"`
	Peers     []PeerConfig     `yaml:"peers"`
	// DataPath moves flows' bytes: splice (default: in the kernel, through
	// a pipe taken only while bytes move), sockmap (an eBPF program
	// redirects each segment to the other socket without waking the relay;
	// flows it cannot take use splice) or copy (through a user-space
	// buffer, for comparison and for kernels without splice on a socket).
	DataPath string `yaml:"data_path"`
	// ParkAfter is how long a flow's direction waits for bytes on a
	// goroutine of its own before it parks in an epoll set with no
	// goroutine; 0 (the default) parks as soon as the socket is empty.
	ParkAfter Duration `yaml:"park_after"`
	// DetachAfter (default 1s): a flow that has moved no byte for this
	// long, with both directions parked, leaves the Go runtime's poller
	// and waits in the data path's epoll set alone, two epoll entries
	// fewer in the kernel and less heap per idle flow. Its next message
	// moves as before; a burst, or a full destination, puts it back first
	// (a few dozen system calls). 0 keeps every flow in the poller.
	DetachAfter *Duration    `yaml:"detach_after"`
	Memory      MemoryConfig `yaml:"memory"`
}

// Detach is detach_after, with its default.
func (c *Config) Detach() time.Duration {
	if c.DetachAfter == nil {
		return defaultDetachAfter
	}
	return c.DetachAfter.D()
}

// MemoryConfig gives back memory the relay holds and does not use.
type MemoryConfig struct {
	// Release (default true): once the relay has started, and again when
	// it has carried flows and then been idle for ReleaseAfter, it returns
	// its free heap to the kernel and unmaps the pages of its own binary
	// that start-up or the flows mapped. The pages stay in the page cache
	// and fault back in when that code runs again.
	Release *bool `yaml:"release"`
	// ReleaseAfter is the idle time before a release (default 30s).
	ReleaseAfter Duration `yaml:"release_after"`
}

// Releases says whether the relay gives memory back (memory.release).
func (m MemoryConfig) Releases() bool { return m.Release == nil || *m.Release }

// AdminConfig places the metrics and admin HTTP API.
type AdminConfig struct {
	// Listen is host:port; loopback by default, "off" disables it.
	Listen string `yaml:"listen"`
}

// LogConfig chooses the log format and level.
type LogConfig struct {
	Format string `yaml:"format"` // text (default) or json
	Level  string `yaml:"level"`  // debug, info (default), warn, error
}

// AuthConfig authenticates relay-to-relay hops.
type AuthConfig struct {
	// PSKFile holds the key shared by the relays of a fleet (at least 16
	// bytes). It is required when a listener accepts convert or a route
	// goes through relays.
	PSKFile string `yaml:"psk_file"`
	// Window is how far a hop's timestamp may be from this relay's clock.
	Window Duration `yaml:"window"`
	// Advertise lists the addresses other relays dial this one at when they
	// differ from its listeners' own (behind NAT); hop cookies name them.
	Advertise []string `yaml:"advertise"`
}

// Limits bound what clients can make the relay hold.
type Limits struct {
	MaxFlows          int      `yaml:"max_flows"`            // all flows (default 8000)
	MaxFlowsPerClient int      `yaml:"max_flows_per_client"` // per client address (default 1000)
	MaxPending        int      `yaml:"max_pending"`          // connects in progress (default 1024)
	MaxHandshakes     int      `yaml:"max_handshakes"`       // clients still sending their head (default 512)
	ConnectTimeout    Duration `yaml:"connect_timeout"`      // next-hop connect (default 5s)
	HandshakeTimeout  Duration `yaml:"handshake_timeout"`    // client's protocol head (default 10s)
	// PooledWait is how long a converter keeps a peer's authenticated
	// pooled connection open before its first request (default 10m).
	PooledWait Duration `yaml:"pooled_wait"`
	// MaxEarly bounds next-leg connects started by SYNs and not yet
	// claimed by an accepted flow (default 1024).
	MaxEarly int `yaml:"max_early"`
	// MaxEarlyPerClient bounds them per client address (an IPv6 client
	// by its /64), so one client's SYNs cannot take the whole table
	// (default 64).
	MaxEarlyPerClient int `yaml:"max_early_per_client"`
}

// LegConfig sets socket options of one kind of leg.
type LegConfig struct {
	IdleTimeout OffDuration `yaml:"idle_timeout"` // no byte either way (default 15m; off: never)
	Keepalive   OffDuration `yaml:"keepalive"`    // TCP keepalive idle time (default 30s; off)
	UserTimeout Duration    `yaml:"user_timeout"` // TCP_USER_TIMEOUT (0: kernel default)
	// RTOMin is the leg's minimum retransmission timeout (TCP_RTO_MIN_US,
	// Linux 6.15; 1 to 200 ms, rounded up to the kernel's clock tick, of
	// which it takes at least 2), 0 keeps the namespace's
	// net.ipv4.tcp_rto_min_us (200 ms by default). A lost segment with
	// nothing sent after it waits for a timer, its tail-loss probe or its
	// retransmission, of about a round trip plus this minimum; so on a
	// lossy access link (cellular, Wi-Fi) a small value cuts the delay a
	// lost message costs an interactive flow. Multipath TCP sockets
	// refuse it, and the relay sets it on their subflows instead (a BPF
	// TCP socket iterator; see docs/relay.md).
	RTOMin Duration `yaml:"rto_min"`
	// ThinTimeouts keeps the leg's retransmission timeout from doubling
	// while few segments are in flight (TCP_THIN_LINEAR_TIMEOUTS): with
	// 1% loss, an interactive message whose retransmission is lost too
	// waits one more timeout instead of two. Subflows of Multipath TCP
	// connections get it as rto_min does.
	ThinTimeouts bool `yaml:"thin_linear_timeouts"`
	// Congestion is the leg's congestion control (TCP_CONGESTION), e.g. bbr
	// or cubic; empty keeps the route's or the namespace's default.
	Congestion string `yaml:"congestion"`
	// SendBuffer and ReceiveBuffer fix the socket buffers (SO_SNDBUFFORCE,
	// SO_RCVBUFFORCE), e.g. 32MiB for a long fat leg; 0 keeps the
	// kernel's autotuning, except that the data path fixes a send buffer
	// at tcp_wmem's maximum once its flow carries bulk over a path of 1 ms
	// or more (datapath.Options.PrimeClientSend).
	SendBuffer    Size `yaml:"send_buffer"`
	ReceiveBuffer Size `yaml:"receive_buffer"`
	// FastOpen sends the first bytes of a connect in its SYN (TCP Fast
	// Open) when there are any: a relay hop's Convert messages, a PROXY
	// header. Default true; false for paths that drop SYNs with data.
	FastOpen *bool `yaml:"fast_open"`
	mptcp    bool  // this dial is Multipath TCP (set per route or peer, not read from the file)
	// lateKeepalive: this dial is a flow's, whose data path sets keepalive
	// once the flow has lasted a second (runtime.keepalive); not read from the file.
	lateKeepalive bool
	// Pacing spreads each window of the leg's sends over its round trip
	// (TCP's own pacing). A relay receives in bursts as fast as the leg
	// before it delivers; paced, it forwards them without filling the next
	// bottleneck's queue in one go.
	Pacing bool `yaml:"pacing"`
}

func (l LegConfig) fastOpen() bool { return l.FastOpen == nil || *l.FastOpen }

// LegsConfig sets each kind of leg: toward clients, servers and relays.
type LegsConfig struct {
	Client LegConfig `yaml:"client"`
	Server LegConfig `yaml:"server"`
	Relay  LegConfig `yaml:"relay"`
}

// ListenerConfig is one listening socket and how flows reach it.
type ListenerConfig struct {
	Name   string `yaml:"name"`
	Listen string `yaml:"listen"` // host:port
	// Mode is explicit (clients name the destination), tproxy or redirect
	// (transparent: the destination is the packet's), or forward (every
	// flow goes to ForwardTo: a port forwarder, like HAProxy's mode tcp).
	Mode string `yaml:"mode"`
	// ForwardTo is a forward listener's destination, ip:port. Routes
	// still apply: it may be reached through relays.
	ForwardTo string `yaml:"forward_to"`
	// Protocols spoken on an explicit listener: socks5, http (CONNECT) and
	// convert (RFC 8803, from other relays); default socks5 and http. With
	// several, the first byte tells which.
	Protocols []string `yaml:"protocols"`
	// AllowClients are the client CIDRs accepted; nothing else is.
	AllowClients []string `yaml:"allow_clients"`
	// AllowDestinations are CIDRs with optional ports (10.0.0.0/8,
	// 0.0.0.0/0:443, [::]/0:80,443, 10.1.0.0/16:8000-8100) a client may reach.
	// Loopback, link-local, metadata and the relay's own addresses are
	// refused unless a listed CIDR names them exactly or more narrowly.
	AllowDestinations []string `yaml:"allow_destinations"`
	// Users for SOCKS5 (RFC 1929) and HTTP Proxy-Authorization: a file
	// of "user:password" lines. Without it no authentication is asked.
	UsersFile string `yaml:"users_file"`
	// ProxyProtocol sends a PROXY v2 header first on direct legs to servers.
	ProxyProtocol bool `yaml:"proxy_protocol"`
	// SpoofSource keeps the client's address as the source of direct legs to
	// servers (tproxy only): transparent both ways. The server's replies
	// must route back through the relay, where the capture rules take them.
	SpoofSource bool `yaml:"spoof_source"`
	// Capture says which flows a transparent listener takes (for the rules
	// `halfway relay rules` prints, or the relay installs with install: true).
	Capture *CaptureConfig `yaml:"capture"`
	// MPTCP accepts Multipath TCP clients (plain TCP clients still work);
	// off by default, since Go would otherwise choose it.
	MPTCP bool `yaml:"mptcp"`
	// EarlySYN opens the next leg when the client's SYN arrives, not when
	// accept returns, so both handshakes overlap (transparent listeners
	// with capture, which tells the relay which SYNs are its own).
	EarlySYN bool `yaml:"early_syn"`
}

// CaptureConfig selects the flows a transparent listener intercepts.
type CaptureConfig struct {
	Dst     []string `yaml:"dst"`     // destination CIDRs (default: any)
	Ports   string   `yaml:"ports"`   // destination ports, e.g. 80,443 (required)
	Install bool     `yaml:"install"` // add the rules at start, remove them at stop
	Mark    int      `yaml:"mark"`    // TPROXY fwmark (default 1)
	Table   int      `yaml:"table"`   // TPROXY routing table (default 100)
}

// UnmarshalYAMLNode decodes a listener, refusing an empty capture section.
func (lc *ListenerConfig) UnmarshalYAMLNode(d *strictyaml.Decoder, n *yaml.Node) error {
	type fields ListenerConfig // without this method, so the decoder walks the fields
	d.Decode(n, (*fields)(lc))
	refuseEmptySections(d, n, "capture")
	return nil
}

// emptySection stands where a section of settings was written with
// nothing after it ("pool:"), which YAML reads as null: taken for an
// absent section, it would turn the feature off without a word, where an
// operator may have meant the section with its defaults.
type emptySection struct{}

func (*emptySection) UnmarshalYAMLNode(*strictyaml.Decoder, *yaml.Node) error {
	return fmt.Errorf("empty: write {} for the defaults, or leave the key out")
}

// refuseEmptySections reports each of keys whose value in mapping n is null.
func refuseEmptySections(d *strictyaml.Decoder, n *yaml.Node, keys ...string) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind == yaml.AliasNode && v.Alias != nil {
			v = v.Alias // "capture: *none", an alias of a null, is as empty
		}
		if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" && slices.Contains(keys, k.Value) {
			d.DecodeField(k.Value, v, &emptySection{})
		}
	}
}

// UnmarshalYAMLNode decodes a capture with mark's and table's defaults in
// place first, so that only a missing one takes its default: 0, as
// written, is refused (Validate), not taken for the default.
func (c *CaptureConfig) UnmarshalYAMLNode(d *strictyaml.Decoder, n *yaml.Node) error {
	type fields CaptureConfig // without this method, so the decoder walks the fields
	c.Mark, c.Table = defaultCaptureMark, defaultCaptureTable
	d.Decode(n, (*fields)(c))
	return nil
}

// RouteConfig sends matching flows direct or through a chain of relays.
// Routes are tried in order; the first that matches wins; a flow that
// matches none goes direct.
type RouteConfig struct {
	Listener string   `yaml:"listener"` // only flows of this listener (default: any)
	Dst      []string `yaml:"dst"`      // destination CIDRs (default: any)
	Ports    string   `yaml:"ports"`    // 80,443,8000-8100 (default: any)
	Via      []string `yaml:"via"`      // next relays host:port in order; empty: direct
	// MPTCP opens the next leg (to the server, or to the first relay when
	// no pooled connection is at hand) with Multipath TCP; a peer that
	// does not speak it makes it plain TCP.
	MPTCP bool `yaml:"mptcp"`
}

// PeerConfig is another relay this one exchanges flows with: it may keep a
// pool of pre-established connections to it, and a Turbo-Start route
// toward it.
type PeerConfig struct {
	// Address is the peer's host:port (its convert listener); a bare
	// host is enough for a peer with turbo and no pool.
	Address string       `yaml:"address"`
	Pool    *PoolConfig  `yaml:"pool"`
	Turbo   *TurboConfig `yaml:"turbo"`
	// MPTCP opens the pool's connections with Multipath TCP, so a relay
	// with several uplinks spreads every pooled flow over them.
	MPTCP bool `yaml:"mptcp"`
}

// UnmarshalYAMLNode decodes a peer, refusing an empty pool or turbo section.
func (p *PeerConfig) UnmarshalYAMLNode(d *strictyaml.Decoder, n *yaml.Node) error {
	type fields PeerConfig // without this method, so the decoder walks the fields
	d.Decode(n, (*fields)(p))
	refuseEmptySections(d, n, "pool", "turbo")
	return nil
}

// PoolConfig keeps pre-established, authenticated connections to a peer.
// A flow routed via the peer takes one and sends its destination in the
// first bytes, so the peer connects onward without a handshake with us
// first. A connection serves one flow; a refill replaces it at once.
type PoolConfig struct {
	// Low and High are the watermarks: when fewer than Low connections are
	// idle, new ones are opened in the background up to High (defaults 4
	// and 2×Low; at most 1024).
	Low  int `yaml:"low"`
	High int `yaml:"high"`
	// MaxIdle replaces a connection no flow took for this long (default
	// 2m; pooled connections are single-use, so this is also their age).
	MaxIdle Duration `yaml:"max_idle"`
}

// UnmarshalYAMLNode decodes a pool with low's default in place first, so
// that only a missing low takes it: low 0, as written, is a pool that opens
// no connection (until the admin API raises it).
func (p *PoolConfig) UnmarshalYAMLNode(d *strictyaml.Decoder, n *yaml.Node) error {
	type fields PoolConfig // without this method, so the decoder walks the fields
	p.Low = defaultPoolLow
	d.Decode(n, (*fields)(p))
	return nil
}

// TurboConfig is Turbo-Start toward a peer: the relay installs a host
// route to the peer, through the same gateway and device as the route it
// replaces, with large initial congestion and receive windows, so relay
// legs skip most of slow start. Legs to clients and servers keep the
// kernel's defaults.
type TurboConfig struct {
	InitCwnd int `yaml:"initcwnd"` // segments (default 100)
	InitRwnd int `yaml:"initrwnd"` // segments (default: initcwnd)
}

// Duration is a time.Duration written like 30s or 10m.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("want a duration like 30s")
	}
	*d = Duration(v)
	return nil
}

func (d Duration) D() time.Duration { return time.Duration(d) }

// OffDuration is a Duration that may also be off (or 0s): unset, it takes
// its default; off, it is 0 once defaults are set.
type OffDuration Duration

// durationOff is an OffDuration written off, until setDefaults.
const durationOff = OffDuration(-1)

func (d *OffDuration) UnmarshalText(b []byte) error {
	if string(b) == "off" {
		*d = durationOff
		return nil
	}
	var v Duration
	if err := v.UnmarshalText(b); err != nil {
		return fmt.Errorf("want a duration like 30s, or off")
	}
	if *d = OffDuration(v); v == 0 {
		*d = durationOff
	}
	return nil
}

func (d OffDuration) D() time.Duration { return time.Duration(d) }

// orDefault is d with def for unset, 0 for off.
func (d OffDuration) orDefault(def time.Duration) OffDuration {
	switch {
	case d == 0:
		return OffDuration(def)
	case d == durationOff:
		return 0
	}
	return d
}

// Size is a byte count written like 4194304, 512KiB, 16MiB or 1GiB.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}, {"", 1}}

func (z *Size) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
			if err != nil || v < 0 || v > (1<<31)/u.mult {
				break
			}
			*z = Size(v * u.mult)
			return nil
		}
	}
	return fmt.Errorf("want a size like 16MiB (0 to 2GiB)")
}

// Defaults an operator would expect when a field is left out.
const (
	DefaultAdmin          = "127.0.0.1:9190"
	defaultMaxFlows       = 8000
	defaultMaxPerClient   = 1000
	defaultMaxPending     = 1024
	defaultMaxHandshakes  = 512
	defaultConnectTimeout = 5 * time.Second
	defaultHandshake      = 10 * time.Second
	defaultWindow         = 30 * time.Second
	defaultReleaseAfter   = 30 * time.Second
	defaultIdle           = 15 * time.Minute
	defaultDetachAfter    = time.Second
	defaultKeepalive      = 30 * time.Second
	maxKeepalive          = 32767 * time.Second // MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL
	defaultPooledWait     = 10 * time.Minute
	defaultMaxEarly       = 1024
	defaultMaxEarlyClient = 64
	defaultPoolLow        = 4
	defaultPoolMaxIdle    = 2 * time.Minute
	defaultTurboWindow    = 100
	maxPoolSize           = 1024
	maxTurboWindow        = 65535
)

// LoadConfig reads, decodes, defaults and validates a config file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s:\n%w", path, err)
	}
	return c, nil
}

// ParseConfig decodes, defaults and validates a config. Settings whose 0
// would mean nothing (a limit, a timeout) hold their defaults before the
// file is read, so a 0 in the file is refused rather than taken for "the
// default".
func ParseConfig(b []byte) (*Config, error) {
	c := Config{
		Auth:   AuthConfig{Window: Duration(defaultWindow)},
		Memory: MemoryConfig{ReleaseAfter: Duration(defaultReleaseAfter)},
		Limits: Limits{
			MaxFlows: defaultMaxFlows, MaxFlowsPerClient: defaultMaxPerClient, MaxPending: defaultMaxPending,
			MaxHandshakes: defaultMaxHandshakes, MaxEarly: defaultMaxEarly, MaxEarlyPerClient: defaultMaxEarlyClient,
			ConnectTimeout: Duration(defaultConnectTimeout), HandshakeTimeout: Duration(defaultHandshake),
			PooledWait: Duration(defaultPooledWait),
		},
	}
	if err := strictyaml.Decode(b, &c); err != nil {
		return nil, err
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		if errs, ok := err.(strictyaml.Errors); ok {
			strictyaml.Locate(b, errs)
		}
		return nil, err
	}
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdmin
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	for i := range c.Peers {
		if p := c.Peers[i].Pool; p != nil {
			if p.High == 0 {
				p.High = min(2*p.Low, maxPoolSize)
			}
			if p.MaxIdle == 0 {
				p.MaxIdle = Duration(defaultPoolMaxIdle)
			}
		}
		if t := c.Peers[i].Turbo; t != nil {
			if t.InitCwnd == 0 {
				t.InitCwnd = defaultTurboWindow
			}
			if t.InitRwnd == 0 {
				t.InitRwnd = t.InitCwnd
			}
		}
	}
	for _, leg := range []*LegConfig{&c.Legs.Client, &c.Legs.Server, &c.Legs.Relay} {
		leg.IdleTimeout = leg.IdleTimeout.orDefault(defaultIdle)
		leg.Keepalive = leg.Keepalive.orDefault(defaultKeepalive)
	}
	for i := range c.Listeners {
		ln := &c.Listeners[i]
		if ln.Mode == "" {
			ln.Mode = "explicit"
		}
		// Convert (relay hops) needs a key, so it is never a silent default.
		if ln.Mode == "explicit" && len(ln.Protocols) == 0 {
			ln.Protocols = []string{"socks5", "http"}
		}
	}
}

// mptcpDials names what opens legs to relays (relay) or to servers with
// Multipath TCP, "" if nothing does.
func (c *Config) mptcpDials(relay bool) string {
	for i, r := range c.Routes {
		if r.MPTCP && (len(r.Via) > 0) == relay {
			return fmt.Sprintf("routes[%d] dials", i)
		}
	}
	if relay {
		for i, pc := range c.Peers {
			if pc.MPTCP && pc.Pool != nil {
				return fmt.Sprintf("peers[%d] pools over", i)
			}
		}
	}
	return ""
}

// mptcpRefuses lists the leg's options that this kernel's Multipath TCP
// sockets refuse, with why.
func mptcpRefuses(leg LegConfig) []string {
	o := leg.socketOptions()
	o.Congestion, o.SendBuffer, o.ReceiveBuffer = "", 0, 0 // MPTCP takes these
	if o == (sockopt.Options{}) {
		return nil
	}
	refused, err := sockopt.Refused(o, true)
	if err != nil {
		return nil // no MPTCP here: Go dials plain TCP, which takes them
	}
	return refused
}

// Warnings are settings that do not apply everywhere the configuration
// would suggest, for the log: a client leg's options that the Multipath
// TCP sockets of MPTCP listeners refuse. The server logs them when it
// cannot give those options to the subflows instead (sockopt.Subflows).
func (c *Config) Warnings() []string {
	var ns time.Duration
	if c.Legs.Client.RTOMin > 0 {
		ns = sockopt.NamespaceRTOMin()
	}
	return c.warnings(ns)
}

// relayHopWarnings name the legs.relay options that relay hops arriving
// over Multipath TCP go without: their sockets refuse them, and the
// subflow iterator gives an MPTCP listener's subflows legs.client's.
func (c *Config) relayHopWarnings() []string {
	return c.mptcpLegWarnings(c.Legs.Relay, func(ln ListenerConfig) bool { return slices.Contains(ln.Protocols, "convert") },
		func(name, refused string) string {
			return fmt.Sprintf("legs.relay: listener %q takes relay hops over Multipath TCP, whose sockets refuse %s here: those hops go without them", name, refused)
		})
}

// mptcpLegWarnings says, for each MPTCP listener that take picks, msg of
// the options of leg that MPTCP sockets refuse here (probed once), if any.
func (c *Config) mptcpLegWarnings(leg LegConfig, take func(ListenerConfig) bool, msg func(listener, refused string) string) []string {
	var ws []string
	var refused []string
	for _, ln := range c.Listeners {
		if !ln.MPTCP || !take(ln) {
			continue
		}
		if refused == nil {
			if refused = mptcpRefuses(leg); len(refused) == 0 {
				return nil
			}
		}
		ws = append(ws, msg(ln.Name, strings.Join(refused, ", ")))
	}
	return ws
}

// warnings are Warnings in a namespace whose net.ipv4.tcp_rto_min_us is
// ns (0: unknown). When that is no more than legs.client.rto_min, every
// socket the relay makes has it already, MPTCP ones too.
func (c *Config) warnings(ns time.Duration) []string {
	leg := c.Legs.Client
	if ns > 0 && ns <= leg.RTOMin.D() {
		leg.RTOMin = 0
	}
	return c.mptcpLegWarnings(leg, func(ListenerConfig) bool { return true }, func(name, refused string) string {
		return fmt.Sprintf("legs.client: listener %q accepts Multipath TCP, whose sockets refuse %s here: its clients go without them%s", name, refused, rtoMinHint(leg))
	})
}

func rtoMinHint(leg LegConfig) string {
	if leg.RTOMin == 0 {
		return ""
	}
	return " (for rto_min, give the routes toward those clients an rto_min metric, ip route change PREFIX … rto_min 20ms, which MPTCP subflows take, or set the host's net.ipv4.tcp_rto_min_us)"
}

// Validate reports every problem with its field path.
func (c *Config) Validate() error {
	var errs strictyaml.Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &strictyaml.Error{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if c.ParkAfter < 0 || c.ParkAfter.D() > time.Minute {
		add("park_after", "%s: want 0 to 1m", c.ParkAfter.D())
	}
	if d := c.Detach(); d < 0 || d > time.Hour {
		add("detach_after", "%s: want 0 (off) to 1h", d)
	}
	if d := c.Memory.ReleaseAfter.D(); d < time.Second || d > 24*time.Hour {
		add("memory.release_after", "%s: want 1s to 24h", d)
	}
	if c.DataPath != "" && c.DataPath != "splice" && c.DataPath != "copy" && c.DataPath != "sockmap" {
		add("data_path", "%q: want splice, sockmap or copy", c.DataPath)
	}
	if c.DataPath == "sockmap" && c.Limits.MaxFlows > datapath.MaxSockmapFlows {
		// Its maps are sized for max_flows at start, which fails past this.
		add("limits.max_flows", "%d: data_path sockmap takes at most %d", c.Limits.MaxFlows, datapath.MaxSockmapFlows)
	}
	if c.Admin.Listen != "off" {
		// The API changes limits and serves profiles, and has no login of
		// its own: it stays on loopback (reach it with ssh -L).
		if ap, err := netip.ParseAddrPort(c.Admin.Listen); err != nil || !ap.Addr().IsLoopback() {
			add("admin.listen", "%q: want a loopback address like 127.0.0.1:9190, or off", c.Admin.Listen)
		}
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log.format", "%q: want text or json", c.Log.Format)
	}
	if _, ok := logLevels[c.Log.Level]; !ok {
		add("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	for _, f := range []struct {
		path string
		v    int
	}{{"limits.max_flows", c.Limits.MaxFlows}, {"limits.max_flows_per_client", c.Limits.MaxFlowsPerClient}, {"limits.max_pending", c.Limits.MaxPending}, {"limits.max_handshakes", c.Limits.MaxHandshakes}, {"limits.max_early", c.Limits.MaxEarly}, {"limits.max_early_per_client", c.Limits.MaxEarlyPerClient}} {
		if f.v <= 0 {
			add(f.path, "%d: want a positive number (leave it out for the default)", f.v)
		}
	}
	for _, f := range []struct {
		path string
		v    Duration
	}{{"limits.connect_timeout", c.Limits.ConnectTimeout}, {"limits.handshake_timeout", c.Limits.HandshakeTimeout}, {"limits.pooled_wait", c.Limits.PooledWait},
		{"auth.window", c.Auth.Window}} {
		if f.v.D() < 10*time.Millisecond {
			add(f.path, "%s: want at least 10ms (leave it out for the default)", f.v.D())
		}
	}
	needPSK := false
	names, tables := map[string]bool{}, map[string]string{}
	if len(c.Listeners) == 0 {
		add("listeners", "want at least one listener")
	}
	for i, ln := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if ln.Name == "" {
			add(p+".name", "want a name (used by routes, metrics and logs)")
		} else if names[ln.Name] {
			add(p+".name", "%q: duplicate listener", ln.Name)
		}
		names[ln.Name] = true
		if ln.Capture != nil {
			// Names that differ only in characters nft refuses share a table.
			if other, ok := tables[captureTable(ln.Name)]; ok {
				add(p+".name", "%q: its capture table %s would be listener %q's too; rename one", ln.Name, captureTable(ln.Name), other)
			}
			tables[captureTable(ln.Name)] = ln.Name
		}
		if ap, err := netip.ParseAddrPort(ln.Listen); err != nil {
			add(p+".listen", "%q: want an address like 0.0.0.0:1080 or [::]:1080", ln.Listen)
		} else if ap.Addr().Is4In6() {
			// An IPv6 socket cannot bind it; the IPv4 socket takes its flows.
			add(p+".listen", "%q: an IPv4-mapped address: write %s", ln.Listen, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
		switch ln.Mode {
		case "explicit":
			if ln.Capture != nil {
				add(p+".capture", "only transparent listeners capture flows")
			}
			if ln.SpoofSource {
				add(p+".spoof_source", "needs mode tproxy: only a transparent socket may use the client's address")
			}
			if ln.EarlySYN {
				add(p+".early_syn", "needs a transparent listener: explicit hops get the same from TCP Fast Open")
			}
			for j, proto := range ln.Protocols {
				switch proto {
				case "socks5", "http":
				case "convert":
					needPSK = true
				default:
					add(fmt.Sprintf("%s.protocols[%d]", p, j), "%q: want socks5, http or convert", proto)
				}
			}
			if len(ln.AllowClients) == 0 {
				add(p+".allow_clients", "an explicit listener accepts nobody without an allow list: name the client CIDRs")
			}
			if len(ln.AllowDestinations) == 0 {
				add(p+".allow_destinations", "an explicit listener reaches nothing without an allow list: name the destination CIDRs")
			}
			if ln.ProxyProtocol && slices.Contains(ln.Protocols, "convert") {
				add(p+".proxy_protocol", "on a convert listener the client is the previous relay, not the real client")
			}
		case "forward":
			if ap, err := netip.ParseAddrPort(ln.ForwardTo); err != nil {
				add(p+".forward_to", "%q: want the destination as ip:port", ln.ForwardTo)
			} else if lap, err := netip.ParseAddrPort(ln.Listen); err == nil && forwardsToItself(lap, ap, nil) {
				// The host's other addresses come and go: a flow to one
				// of them on this port is refused (refuseTransparent).
				add(p+".forward_to", "%q: the listener itself", ln.ForwardTo)
			}
			for _, bad := range []struct {
				set   bool
				field string
			}{{len(ln.Protocols) > 0, "protocols"}, {ln.Capture != nil, "capture"}, {ln.SpoofSource, "spoof_source"}, {ln.EarlySYN, "early_syn"}, {len(ln.AllowDestinations) > 0, "allow_destinations"}} {
				if bad.set {
					add(p+"."+bad.field, "not for a forward listener: its destination is forward_to")
				}
			}
		case "tproxy", "redirect":
			if len(ln.Protocols) > 0 {
				add(p+".protocols", "a transparent listener speaks no protocol: the destination is the packet's")
			}
			if ln.SpoofSource && ln.Mode != "tproxy" {
				add(p+".spoof_source", "needs mode tproxy: only a transparent socket may use the client's address")
			}
			if ln.EarlySYN && ln.Capture == nil {
				add(p+".early_syn", "needs capture: its ports and dst tell which SYNs are this listener's")
			}
			if c := ln.Capture; c != nil {
				if _, err := parsePorts(c.Ports); err != nil || c.Ports == "" {
					add(p+".capture.ports", "%q: want ports like 80,443", c.Ports)
				}
				lap, lerr := netip.ParseAddrPort(ln.Listen)
				for j, d := range c.Dst {
					if pr, err := netip.ParsePrefix(d); err != nil {
						add(fmt.Sprintf("%s.capture.dst[%d]", p, j), "%q: want a CIDR like 10.0.0.0/8", d)
					} else if lerr == nil && pr.Addr().Is4() != lap.Addr().Is4() {
						add(fmt.Sprintf("%s.capture.dst[%d]", p, j), "%q: not of the listener's address family (%s); capture the other family with a listener of its own", d, ln.Listen)
					}
				}
				// Mark 0 is every unmarked packet's, and table 0 no table:
				// ip rule would take it for "unspecified".
				if c.Mark == 0 {
					add(p+".capture.mark", "0 is the mark of every unmarked packet: want another (default %d)", defaultCaptureMark)
				}
				if c.Table == 0 {
					add(p+".capture.table", "0 is no routing table: want another (default %d)", defaultCaptureTable)
				}
				// Both are 32-bit numbers to nft and ip rule.
				if c.Mark < 0 || c.Table < 0 || c.Mark > math.MaxUint32 || c.Table > math.MaxUint32 || c.Table > 252 && c.Table < 256 {
					add(p+".capture", "mark and table: want positive 32-bit numbers (tables 253-255 are the kernel's)")
				}
			}
		default:
			add(p+".mode", "%q: want explicit, tproxy, redirect or forward", ln.Mode)
		}
		if ln.ForwardTo != "" && ln.Mode != "forward" {
			add(p+".forward_to", "only for mode forward")
		}
		for j, s := range ln.AllowClients {
			if _, err := netip.ParsePrefix(s); err != nil {
				add(fmt.Sprintf("%s.allow_clients[%d]", p, j), "%q: want a CIDR like 10.0.0.0/8", s)
			}
		}
		for j, s := range ln.AllowDestinations {
			if _, err := parseDestRule(s); err != nil {
				add(fmt.Sprintf("%s.allow_destinations[%d]", p, j), "%q: %v", s, err)
			}
		}
		if ln.UsersFile != "" {
			// Only SOCKS5 and HTTP clients log in: elsewhere the file would
			// be ignored, and the listener open to every allowed client.
			if !slices.Contains(ln.Protocols, "socks5") && !slices.Contains(ln.Protocols, "http") {
				add(p+".users_file", "only SOCKS5 and HTTP clients log in, and this listener speaks neither")
			} else if _, err := loadUsers(ln.UsersFile); err != nil {
				add(p+".users_file", "%v", err)
			}
		}
	}
	c.validateAddresses(add)
	for i, r := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if r.Listener != "" && !names[r.Listener] {
			add(p+".listener", "%q: no such listener", r.Listener)
		}
		for j, s := range r.Dst {
			if _, err := netip.ParsePrefix(s); err != nil {
				add(fmt.Sprintf("%s.dst[%d]", p, j), "%q: want a CIDR like 10.0.0.0/8", s)
			}
		}
		if r.Ports != "" {
			if _, err := parsePorts(r.Ports); err != nil {
				add(p+".ports", "%q: %v", r.Ports, err)
			}
		}
		for j, v := range r.Via {
			if _, err := netip.ParseAddrPort(v); err != nil {
				add(fmt.Sprintf("%s.via[%d]", p, j), "%q: want a relay address like 10.0.0.2:7100", v)
			}
		}
		if len(r.Via) > 3 {
			add(p+".via", "%d relays: at most 3", len(r.Via))
		}
		if len(r.Via) > 0 {
			needPSK = true
		}
	}
	for _, lg := range []struct {
		name string
		leg  LegConfig
	}{{"client", c.Legs.Client}, {"server", c.Legs.Server}, {"relay", c.Legs.Relay}} {
		// One the relay may not choose would fail every dial of the leg,
		// and leave its accepted connections on the default.
		if lg.leg.Congestion != "" {
			if err := sockopt.CongestionUsable(lg.leg.Congestion); err != nil {
				add("legs."+lg.name+".congestion", "%q: %v", lg.leg.Congestion, err)
			}
		}
		// A buffer the process may not force would fail every socket of
		// the leg, each flow reset: refuse the file instead.
		if lg.leg.SendBuffer > 0 || lg.leg.ReceiveBuffer > 0 {
			if err := sockopt.ForceBuffers(); err != nil {
				f := "send_buffer"
				if lg.leg.SendBuffer == 0 {
					f = "receive_buffer"
				}
				add("legs."+lg.name+"."+f, "fixed buffers need CAP_NET_ADMIN, which this relay lacks (%v)", err)
			}
		}
		// TCP_USER_TIMEOUT is an int of milliseconds.
		if d := lg.leg.UserTimeout.D(); d > math.MaxInt32*time.Millisecond {
			add("legs."+lg.name+".user_timeout", "%v: want at most %v", d, math.MaxInt32*time.Millisecond)
		}
		// TCP_KEEPIDLE and TCP_KEEPINTVL take at most 32767 s: the kernel
		// refuses more, and the leg's sockets would go without keepalive.
		if d := lg.leg.Keepalive.D(); d > maxKeepalive {
			add("legs."+lg.name+".keepalive", "%v: want at most %v", d, maxKeepalive)
		}
		if d := lg.leg.RTOMin.D(); d != 0 {
			if d < time.Millisecond || d > 200*time.Millisecond {
				add("legs."+lg.name+".rto_min", "%v: want 1ms to 200ms", d)
			} else if refused, err := sockopt.Refused(sockopt.Options{RTOMin: d}, false); err == nil && len(refused) > 0 {
				add("legs."+lg.name+".rto_min", "%v: this kernel refuses it (%s): TCP_RTO_MIN_US needs Linux 6.15 and at least 2 clock ticks", d, refused[0])
			}
		}
	}
	// An option a Multipath TCP socket refuses fails its dial, which Go
	// then retries as plain TCP: every connect of the leg would lose MPTCP.
	for _, lg := range []struct {
		name string
		leg  LegConfig
		why  string
	}{{"server", c.Legs.Server, c.mptcpDials(false)}, {"relay", c.Legs.Relay, c.mptcpDials(true)}} {
		if lg.why == "" {
			continue
		}
		if refused := mptcpRefuses(lg.leg); len(refused) > 0 {
			add("legs."+lg.name, "%s Multipath TCP, whose sockets refuse %s here: every such dial would fall back to plain TCP", lg.why, strings.Join(refused, ", "))
		}
	}
	peers := map[netip.Addr]bool{}
	for i, pc := range c.Peers {
		p := fmt.Sprintf("peers[%d]", i)
		host, err := parsePeer(pc.Address)
		switch {
		case err != nil:
			add(p+".address", "%q: want a relay address like 10.0.0.2:7100", pc.Address)
		case peers[host]:
			add(p+".address", "%q: duplicate peer", pc.Address)
		}
		peers[host] = true
		if pc.Pool == nil && pc.Turbo == nil {
			add(p, "a peer needs a pool, turbo or both")
		}
		if pl := pc.Pool; pl != nil {
			if _, perr := netip.ParseAddrPort(pc.Address); err == nil && perr != nil { // a bad address is said once, above
				add(p+".address", "%q: a pool needs the peer's port, like 10.0.0.2:7100", pc.Address)
			}
			if pl.Low < 0 || pl.High < pl.Low || pl.High > maxPoolSize {
				add(p+".pool", "low %d, high %d: want 0 ≤ low ≤ high ≤ %d", pl.Low, pl.High, maxPoolSize)
			}
			needPSK = true
		}
		if t := pc.Turbo; t != nil {
			if t.InitCwnd < 1 || t.InitCwnd > maxTurboWindow || t.InitRwnd < 1 || t.InitRwnd > maxTurboWindow {
				add(p+".turbo", "initcwnd %d, initrwnd %d: want 1 to %d segments", t.InitCwnd, t.InitRwnd, maxTurboWindow)
			}
		}
	}
	for i, a := range c.Auth.Advertise {
		if _, err := netip.ParseAddrPort(a); err != nil {
			add(fmt.Sprintf("auth.advertise[%d]", i), "%q: want an address like 203.0.113.5:7100", a)
		}
	}
	// A key file is read at start and reload whether or not a hop needs
	// it yet: one the relay could not read is the file's error.
	if needPSK && c.Auth.PSKFile == "" {
		add("auth.psk_file", "relay hops (convert listeners, routes via relays) need a pre-shared key file")
	} else if c.Auth.PSKFile != "" {
		if _, err := loadPSK(c.Auth.PSKFile); err != nil {
			add("auth.psk_file", "%v", err)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// validateAddresses refuses listeners, and the admin API, that would
// listen where another already does: the second socket's bind fails at
// start or reload, which a check of the file should say. A listener on an
// IPv4 address has an IPv4 socket and one on an IPv6 address an IPv6-only
// one, so only sockets of one family on one port can clash.
func (c *Config) validateAddresses(add func(path, format string, args ...any)) {
	type socket struct {
		name string
		ap   netip.AddrPort
	}
	clash := func(a, b netip.AddrPort) bool {
		x, y := a.Addr().Unmap(), b.Addr().Unmap()
		return a.Port() != 0 && a.Port() == b.Port() && x.Is4() == y.Is4() &&
			(x == y || x.IsUnspecified() || y.IsUnspecified())
	}
	var bound []socket
	for i, ln := range c.Listeners {
		ap, err := netip.ParseAddrPort(ln.Listen)
		if err != nil {
			continue // reported with the listener
		}
		for _, b := range bound {
			if clash(ap, b.ap) {
				add(fmt.Sprintf("listeners[%d].listen", i), "%q: listener %q listens there too", ln.Listen, b.name)
				break
			}
		}
		bound = append(bound, socket{ln.Name, ap})
	}
	if ap, err := netip.ParseAddrPort(c.Admin.Listen); err == nil {
		for _, b := range bound {
			if clash(ap, b.ap) {
				add("admin.listen", "%q: listener %q listens there too", c.Admin.Listen, b.name)
				break
			}
		}
	}
}

// forwardsToItself tells whether a listener at listen that connects to
// dst connects to itself: dst is its address, or, for a listener on every
// address of its family, a loopback, unspecified or (own, when not nil)
// own address of that family, on its port.
func forwardsToItself(listen, dst netip.AddrPort, own func(netip.Addr) bool) bool {
	l, d := listen.Addr().Unmap().WithZone(""), dst.Addr().Unmap().WithZone("")
	if listen.Port() != dst.Port() || l.Is4() != d.Is4() {
		return false
	}
	return d == l || l.IsUnspecified() && (d.IsLoopback() || d.IsUnspecified() || own != nil && own(d))
}

// portSet is a set of port ranges; nil means every port.
type portSet [][2]uint16

func (ps portSet) has(p uint16) bool {
	if ps == nil {
		return true
	}
	for _, r := range ps {
		if p >= r[0] && p <= r[1] {
			return true
		}
	}
	return false
}

// parsePorts reads "80,443,8000-8100".
func parsePorts(s string) (portSet, error) {
	var ps portSet
	for _, f := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.ParseUint(hi, 10, 16)
		}
		if err1 != nil || err2 != nil || a == 0 || b < a {
			return nil, fmt.Errorf("want ports like 80,443,8000-8100")
		}
		ps = append(ps, [2]uint16{uint16(a), uint16(b)})
	}
	return ps, nil
}

// destRule is an allowed destination: a prefix and its ports.
type destRule struct {
	prefix netip.Prefix
	ports  portSet
}

// parseDestRule reads 10.0.0.0/8, 10.0.0.0/8:80,443, [::]/0:443 or
// [2001:db8::/32]:443.
func parseDestRule(s string) (destRule, error) {
	cidr, ports, hasPorts := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return destRule{}, fmt.Errorf("want a CIDR with optional ports like [::]/0:443")
		}
		cidr = s[1:end]
		switch rest := s[end+1:]; {
		case strings.HasPrefix(rest, "/"): // [::]/0:443: the length follows the bracket
			bits, p, ok := strings.Cut(rest, ":")
			cidr, ports, hasPorts = cidr+bits, p, ok
		case strings.HasPrefix(rest, ":"):
			ports, hasPorts = rest[1:], true
		case rest != "":
			return destRule{}, fmt.Errorf("want a CIDR with optional ports like [::]/0:443")
		}
	} else if i := strings.LastIndex(s, ":"); i >= 0 && !strings.Contains(s[:i], ":") {
		cidr, ports, hasPorts = s[:i], s[i+1:], true
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return destRule{}, fmt.Errorf("want a CIDR with optional ports like 10.0.0.0/8:80,443")
	}
	r := destRule{prefix: p.Masked()}
	if hasPorts {
		if r.ports, err = parsePorts(ports); err != nil {
			return destRule{}, err
		}
	}
	return r, nil
}

// loadUsers reads user:password lines; # starts a comment.
func loadUsers(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, p, ok := strings.Cut(line, ":")
		if !ok || u == "" || p == "" || len(u) > 255 || len(p) > 255 {
			return nil, fmt.Errorf("%s:%d: want user:password", path, i+1)
		}
		users[u] = p
	}
	if len(users) == 0 {
		// An explicit listener with no users asks no login: a file emptied
		// to revoke its last user must not open the listener to everyone.
		return nil, fmt.Errorf("%s: no user:password line (leave users_file out to ask no login)", path)
	}
	return users, nil
}

// parsePeer reads a peer's host:port or bare host.
func parsePeer(s string) (netip.Addr, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err
}

// loadPSK reads the pre-shared key: the file's bytes, trailing newline trimmed.
func loadPSK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if len(b) < 16 {
		return nil, fmt.Errorf("%s: the key has %d bytes, want at least 16", path, len(b))
	}
	return b, nil
}
