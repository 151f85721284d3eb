// Package relay is halfway's split-TCP relay: it terminates a client's TCP
// connection and opens the next leg toward the destination, directly or
// through a chain of further relays, then moves bytes both ways with
// splice, keeping TCP's semantics (half-close, resets) end to end.
//
// Flows reach a relay transparently (TPROXY, REDIRECT) or explicitly
// (SOCKS5, HTTP CONNECT, and RFC 8803 Convert between relays, where the
// destination rides in the first bytes of a Fast Open SYN). Hops between
// relays are authenticated with a pre-shared key.
//
//	cfg, err := relay.LoadConfig("relay.yaml")
//	srv, err := relay.New(cfg, slog.Default(), metrics.NewRegistry())
//	err = srv.Run(ctx) // until ctx ends; then drains
package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"halfway/datapath"
	hm "halfway/metrics"
	"halfway/sockopt"
)

// Server runs a relay's listeners and flows.
type Server struct {
	log     *slog.Logger
	metrics *metrics
	reg     *hm.Registry

	state atomic.Pointer[runtime] // swapped by Reload
	// reloadMu serializes Reload and PUT /api/tunables: a PUT never
	// builds on the runtime a reload is about to replace.
	reloadMu sync.Mutex

	mu         sync.Mutex
	listeners  map[string]*listener
	admin      *adminServer
	table      flowTable // active flows and per-client counts, sharded
	pending    atomic.Int64
	handshakes atomic.Int64 // clients still sending their protocol head
	active     atomic.Int64
	ended      atomic.Uint64 // flows released; the memory loop sees short flows by it
	// draining is set under drainMu's write lock; admit reads it under
	// the read lock, so no flow is admitted after Drain starts waiting.
	drainMu     sync.RWMutex
	draining    atomic.Bool
	hurry       chan struct{} // closed by Hurry: a drain's grace ends now
	started     chan struct{} // closed by Run once its listeners are open
	hurryOnce   sync.Once
	refusing    chan struct{} // bounds refusals answered in protocol
	work        chan accepted // accepted connections for idle workers
	idleWorkers atomic.Int32
	own         atomic.Pointer[ownSet]     // what this host delivers locally, refreshed
	ephemeral   atomic.Uint32              // net.ipv4.ip_local_port_range, low<<16 | high, refreshed
	routes      policyRoutes               // TPROXY policy routes shared by listeners
	retired     map[string]*listener       // removed listeners, or replaced by one that installs no capture, whose capture outlives them, by capture table (under mu)
	parked      map[*net.TCPConn]*listener // peers' pooled connections awaiting a request, and where (under mu)
	pools       atomic.Pointer[map[netip.AddrPort]*pool]
	// uncaptureErrs are the failed capture removals of listeners a reload
	// replaced under their name (not in retired), for the stop (under mu).
	uncaptureErrs []error
	// poolsClosing counts pools a reload removed that are still closing.
	poolsClosing sync.WaitGroup
	turbo        turboRoutes
	subflows     *sockopt.Subflows // options for MPTCP subflows, once needed (under mu)
	early        earlyTable        // dials started by clients' SYNs
	mem          memStats

	// Listening sockets a service manager passed (Inherit), by address,
	// and what this process set on them that outlives a listener: a
	// fixed receive buffer, its listening subflow's options (under mu).
	inherited         map[netip.AddrPort]inherited
	inheritedFixed    map[netip.AddrPort]bool
	inheritedSubflows map[netip.AddrPort]*sockopt.SubflowOptions

	flowCtx context.Context // canceled to abort every flow
	// resolver looks up the names explicit clients ask for (tests give
	// one that asks their own DNS server).
	resolver   *net.Resolver
	onPath     func(up bool, p datapath.Path)
	cancelAll  context.CancelFunc
	flowsWG    sync.WaitGroup
	acceptorWG sync.WaitGroup
}

// runtime is the part of the configuration flows read; Reload swaps it
// whole, so a flow sees one consistent version.
type runtime struct {
	cfg      *Config
	auth     *hopAuth // nil without a PSK
	routes   []route
	tunables Tunables
	mptcp    bool // some listener, route or peer asks for MPTCP: flows check their legs
	// keepalive is what a flow's data path puts on its server leg, dialed
	// without (LegConfig.lateKeepalive), once the flow has lasted a
	// second: [0] for a leg to a server, [1] to a relay; nil when off.
	keepalive [2]*net.KeepAliveConfig
}

// Tunables are the settings the admin API may change at run time.
type Tunables struct {
	// Pools overrides pools' watermarks, by peer address.
	Pools             map[string]Watermarks `json:"pools,omitempty"`
	MaxFlows          int                   `json:"max_flows"`
	MaxFlowsPerClient int                   `json:"max_flows_per_client"`
	MaxPending        int                   `json:"max_pending"`
	ConnectTimeout    time.Duration         `json:"connect_timeout_ns"`
	ClientIdle        time.Duration         `json:"client_idle_timeout_ns"`
	ServerIdle        time.Duration         `json:"server_idle_timeout_ns"`
}

func (t Tunables) validate() error {
	switch {
	case t.MaxFlows < 1:
		return errors.New("max_flows: want at least 1")
	case t.MaxFlowsPerClient < 1:
		return errors.New("max_flows_per_client: want at least 1")
	case t.MaxPending < 1:
		return errors.New("max_pending: want at least 1")
	case t.ConnectTimeout < 10*time.Millisecond:
		return errors.New("connect_timeout: want at least 10ms")
	case t.ClientIdle < 0 || t.ServerIdle < 0:
		return errors.New("idle timeouts: want 0 (never) or more")
	}
	for peer, w := range t.Pools {
		if w.Low < 0 || w.High < w.Low || w.High > maxPoolSize {
			return fmt.Errorf("pools[%s]: low %d, high %d: want 0 ≤ low ≤ high ≤ %d", peer, w.Low, w.High, maxPoolSize)
		}
	}
	return nil
}

// Watermarks are a pool's: refill below Low, up to High.
type Watermarks struct {
	Low  int `json:"low"`
	High int `json:"high"`
}

// New checks cfg and prepares a server; Run starts it.
func New(cfg *Config, log *slog.Logger, reg *hm.Registry) (*Server, error) {
	if reg == nil {
		reg = hm.NewRegistry()
	}
	s := &Server{
		log:       log,
		reg:       reg,
		listeners: map[string]*listener{},
		retired:   map[string]*listener{},
		parked:    map[*net.TCPConn]*listener{},
		refusing:  make(chan struct{}, 64),
		work:      make(chan accepted),
		hurry:     make(chan struct{}),
		started:   make(chan struct{}),
	}
	s.table.init()
	rt, err := newRuntime(cfg)
	if err != nil {
		return nil, err
	}
	s.state.Store(rt)
	s.pools.Store(&map[netip.AddrPort]*pool{})
	s.metrics = newMetrics(reg, s)
	s.flowCtx, s.cancelAll = context.WithCancel(context.Background())
	s.resolver = net.DefaultResolver
	s.onPath = s.pathCounted // one func value for every flow
	if err := s.refreshOwn(); err != nil {
		return nil, err // a relay that does not know its own addresses would not refuse them
	}
	return s, nil
}

// ownRefresh is how often the relay re-reads its own addresses, which
// policies refuse as destinations unless named, and repairs its turbo
// routes.
const ownRefresh = 10 * time.Second

// refreshOwn re-reads the relay's own addresses. One that cannot read
// them (no descriptor left for the netlink socket) keeps those known and
// says why: an empty set would open them to catch-all rules.
func (s *Server) refreshOwn() error {
	s.ephemeral.Store(ephemeralRange())
	own, err := ownAddrs()
	if err != nil {
		return fmt.Errorf("read the relay's own addresses: %w", err)
	}
	// Where peers reach this relay through NAT, that address leads here too.
	for _, a := range s.state.Load().cfg.Auth.Advertise {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			own.addrs[ap.Addr().Unmap()] = true
		}
	}
	s.own.Store(own)
	return nil
}

func (s *Server) refreshOwnLoop() {
	t := time.NewTicker(ownRefresh)
	defer t.Stop()
	lastTurbo := ""
	for {
		select {
		case <-s.flowCtx.Done():
			return
		case <-t.C:
			if err := s.refreshOwn(); err != nil {
				s.log.Warn("own addresses kept", "err", err)
			}
			// Logged when it changes, not every round.
			msg := ""
			if err := s.turbo.refresh(); err != nil {
				msg = err.Error()
			}
			if msg != lastTurbo {
				if msg != "" {
					s.log.Warn("turbo routes", "err", msg)
				} else {
					s.log.Info("turbo routes in place again")
				}
				lastTurbo = msg
			}
		}
	}
}

func newRuntime(cfg *Config) (*runtime, error) {
	rt := &runtime{cfg: cfg, tunables: Tunables{
		MaxFlows:          cfg.Limits.MaxFlows,
		MaxFlowsPerClient: cfg.Limits.MaxFlowsPerClient,
		MaxPending:        cfg.Limits.MaxPending,
		ConnectTimeout:    cfg.Limits.ConnectTimeout.D(),
		ClientIdle:        cfg.Legs.Client.IdleTimeout.D(),
		ServerIdle:        cfg.Legs.Server.IdleTimeout.D(),
	}}
	if cfg.Auth.PSKFile != "" {
		key, err := loadPSK(cfg.Auth.PSKFile)
		if err != nil {
			return nil, err
		}
		rt.auth = newHopAuth(key, cfg.Auth.Window.D())
		for _, a := range cfg.Auth.Advertise {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return nil, err
			}
			rt.auth.identities = append(rt.auth.identities, ap)
		}
	}
	var err error
	if rt.routes, err = compileRoutes(cfg.Routes); err != nil {
		return nil, err
	}
	for i, leg := range []LegConfig{cfg.Legs.Server, cfg.Legs.Relay} {
		if leg.Keepalive > 0 {
			ka := leg.keepaliveConfig()
			rt.keepalive[i] = &ka
		}
	}
	for _, l := range cfg.Listeners {
		rt.mptcp = rt.mptcp || l.MPTCP
	}
	for _, r := range cfg.Routes {
		rt.mptcp = rt.mptcp || r.MPTCP
	}
	for _, p := range cfg.Peers {
		rt.mptcp = rt.mptcp || p.MPTCP
	}
	return rt, nil
}

// Run opens the listeners and the admin API and serves until ctx ends;
// then it drains: stops accepting and waits up to grace for flows to end
// before closing the rest.
func (s *Server) Run(ctx context.Context, grace time.Duration) error {
	go s.refreshOwnLoop()
	if err := s.apply(s.state.Load().cfg, nil); err != nil {
		s.cancelAll() // ends refreshOwnLoop
		s.closeListeners()
		s.mu.Lock()
		// As in Drain: no reload from now on (closePools waits for the
		// pools a reload removes).
		s.drainMu.Lock()
		s.draining.Store(true)
		s.drainMu.Unlock()
		s.stopEarly()
		s.mu.Unlock()
		s.closePools()
		_ = s.turbo.apply(nil)
		s.closeSubflows()
		if s.admin != nil {
			s.admin.close()
		}
		return err
	}
	s.log.Info("relay started", "listeners", s.listenerCount(), "admin", s.state.Load().cfg.Admin.Listen)
	close(s.started)
	go s.memoryLoop()
	<-ctx.Done()
	// A cleanup that failed is the stop's error: a supervisor sees the
	// rules or routes left behind, not a clean stop.
	return s.Drain(grace)
}

// Started is closed once Run has opened the listeners (and installed the
// capture rules and routes) of the configuration New was given: the relay
// is ready. It stays open when Run fails to start.
func (s *Server) Started() <-chan struct{} { return s.started }

// park keeps a peer's pooled connection where Drain finds it; false when
// draining already.
//
// key is the pre-shared key the greeting was checked with: when a reload
// has changed it since, or taken l's Convert hops away, the connection is
// not parked (Reload closes those parked before it).
func (s *Server) park(l *listener, c *net.TCPConn, key []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A reload that took the listener's Convert hops away has closed those
	// parked before (under s.mu): one greeted just before it is not parked
	// after it, to wait for a request it would refuse.
	if s.draining.Load() || l.retired.Load() || !l.cur.Load().protos["convert"] {
		return false
	}
	if rt := s.state.Load(); rt.auth == nil || !bytes.Equal(rt.auth.key, key) {
		return false
	}
	s.parked[c] = l
	return true
}

// closeParked closes the peers' pooled connections parked on l (nil: on
// every listener), for a reload that changes the key or takes l's Convert
// hops away: a request could not be served under it. Most carry no
// request yet, and their peer opens new ones; one whose request the
// kernel has just acknowledged is reset, and its flow fails (its peer may
// not send acknowledged bytes again), as it would with an error answer.
func (s *Server) closeParked(l *listener) {
	for c, on := range s.parked {
		if l == nil || on == l {
			c.Close()
			delete(s.parked, c)
		}
	}
}

// expireParked ends the wait of every parked pooled connection at once,
// as pooled_wait would: a request already received (the peer saw it
// acknowledged, and may not send it again elsewhere) is served, and a
// connection with none is closed by its own goroutine. Closing them here
// instead would reset acknowledged requests, and fail their flows.
func (s *Server) expireParked() {
	now := time.Now()
	for c := range s.parked {
		_ = c.SetReadDeadline(now)
		delete(s.parked, c)
	}
}

func (s *Server) unpark(c *net.TCPConn) {
	s.mu.Lock()
	delete(s.parked, c)
	s.mu.Unlock()
}

// Reload applies a new configuration: listeners are added, removed or
// updated in place; established flows are not touched.
func (s *Server) Reload(cfg *Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.draining.Load() {
		return fmt.Errorf("%w: draining", ErrNotApplied)
	}
	rt, err := newRuntime(cfg)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotApplied, err) // nothing changed yet
	}
	// The new runtime comes into force only once apply has opened the
	// listeners it needs (its commit): a reload refused before that
	// changes nothing, not even for a moment.
	commit := func() {
		old := s.state.Load()
		// Nonces seen stay seen: a reload must not reopen the replay window.
		if old.auth != nil && rt.auth != nil && bytes.Equal(old.auth.key, rt.auth.key) {
			// Keep the nonces; take the new window and addresses.
			a := old.auth
			a.mu.Lock()
			a.identities = rt.auth.identities
			a.mu.Unlock()
			a.window.Store(int64(cfg.Auth.Window.D()))
			rt.auth = a
		}
		// The file's limits replace any changed at run time through the admin API.
		s.state.Store(rt)
		if h, ok := s.log.Handler().(*logHandler); ok {
			h.set(cfg.Log) // a logger of NewLogger's: log.level and log.format apply
		}
		if err := s.refreshOwn(); err != nil { // auth.advertise may have changed
			s.log.Warn("own addresses kept", "err", err)
		}
		if old.auth != nil && (rt.auth == nil || !bytes.Equal(old.auth.key, rt.auth.key)) {
			// Pooled connections were greeted under the old key: their
			// requests would be judged by the new one. They go now, while
			// they carry nothing (apply holds s.mu).
			s.closeParked(nil)
		}
	}
	if err := s.apply(cfg, commit); err != nil {
		return err
	}
	s.log.Info("configuration reloaded", "listeners", s.listenerCount())
	return nil
}

// ErrNotApplied marks a Reload that changed nothing: its key file could
// not be read, a listener could not open, or the relay is draining, and
// the running configuration stays whole.
var ErrNotApplied = errors.New("configuration not applied")

// sameSocket tells whether a listener configured as lc can keep the
// socket (and capture rules) of one configured as old.
func sameSocket(old, lc *ListenerConfig) bool {
	return old.Listen == lc.Listen && old.Mode == lc.Mode && old.MPTCP == lc.MPTCP && reflect.DeepEqual(old.Capture, lc.Capture)
}

// apply makes the set of open listeners match cfg. It opens the new and
// replaced listeners it can before it closes any, so that one that cannot
// open (its port taken, its capture refused) leaves every listener as it
// was (ErrNotApplied). Those that need what a closing one holds (its port,
// or its capture table) open after it closes; if one of them then fails,
// a replaced listener gets its previous configuration back.
//
// commit, if not nil, runs (under s.mu) at the point from which cfg
// applies: before it, apply has changed nothing.
func (s *Server) apply(cfg *Config, commit func()) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return fmt.Errorf("%w: draining", ErrNotApplied)
	}
	claimed := s.routes.claim(cfg)
	type opening struct {
		lc  ListenerConfig
		old *listener // replaced, or nil
		l   *listener
	}
	type update struct {
		l      *listener
		st     *listenerState
		rcvbuf int
	}
	var updates []update
	var opens []*opening
	var closing []*listener // replaced and removed
	want := map[string]bool{}
	installs := map[string]bool{} // listeners of cfg that install a capture
	var errs []error
	// A listener configured mptcp that the kernel gave a TCP socket
	// (net.mptcp.enabled 0 then) gets a new one once the kernel makes
	// MPTCP sockets; until then it stays TCP only, and each reload says so.
	// One probe socket per reload, for the listeners and the dials.
	noMPTCP := sync.OnceValue(func() error { _, err := sockopt.Refused(sockopt.Options{}, true); return err })
	var tcpOnly []string
	for i := range cfg.Listeners {
		lc := cfg.Listeners[i]
		want[lc.Name] = true
		installs[lc.Name] = lc.Capture != nil && lc.Capture.Install
		l, ok := s.listeners[lc.Name]
		// A listening socket's fixed receive buffer cannot be unfixed: a
		// listener whose connections' leg no longer has one gets a new
		// socket; a new or changed one is set on the socket it has.
		rcvbuf := acceptedReceiveBuffer(cfg, lc)
		if ok && sameSocket(&l.cfg, &lc) && !(l.tcpOnly && noMPTCP() == nil) && !(l.rcvbuf > 0 && rcvbuf == 0) {
			st, err := newListenerState(lc, &s.own)
			if err != nil {
				errs = append(errs, fmt.Errorf("listener %s: %w", lc.Name, err))
			} else if l.tcpOnly {
				st.cfg.MPTCP = false
				tcpOnly = append(tcpOnly, lc.Name)
			}
			updates = append(updates, update{l, st, rcvbuf})
			continue
		}
		if ok {
			closing = append(closing, l)
		}
		opens = append(opens, &opening{lc: lc, old: l})
	}
	for name, l := range s.listeners {
		if !want[name] {
			closing = append(closing, l)
		}
	}
	// The admin API moves as a listener does: its new address opens with
	// them, before the commit (after it, if a closing listener holds its
	// port); its old one closes with the closing listeners.
	adminTo := cfg.Admin.Listen
	adminLeaves := s.admin != nil && s.admin.listen != adminTo
	adminMoves := adminTo != "off" && (s.admin == nil || adminLeaves)
	blocked := func(lc *ListenerConfig) bool {
		if old := s.retired[captureTable(lc.Name)]; lc.Capture != nil && old != nil && old.flows.Load() > 0 {
			return true // its table carries a retired listener's flows: taken over only once committed
		}
		// A retired listener without flows is taking its capture away
		// (flowDone), or failed to: its table carries nothing to keep, and
		// the new listener rebuilds it, after a removal under way
		// (policyRoutes.tables).
		ap, _ := netip.ParseAddrPort(lc.Listen)
		if adminLeaves && addrPortOf(s.admin.ln.Addr()).Port() == ap.Port() {
			return true
		}
		for _, o := range closing {
			if addrPortOf(o.ln.Addr()).Port() == ap.Port() || lc.Capture != nil && o.cfg.Capture != nil && captureTable(lc.Name) == captureTable(o.cfg.Name) {
				return true
			}
		}
		return false
	}
	if len(errs) == 0 {
		for _, o := range opens {
			if blocked(&o.lc) {
				continue // after the listener in its way has closed
			}
			var err error
			if o.l, err = s.openListener(o.lc, cfg); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	var admin *adminServer
	if adminAP, _ := netip.ParseAddrPort(adminTo); len(errs) == 0 && adminMoves && !slices.ContainsFunc(closing, func(l *listener) bool {
		return adminAP.Port() != 0 && addrPortOf(l.ln.Addr()).Port() == adminAP.Port()
	}) {
		var err error
		if admin, err = s.startAdmin(adminTo); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		for _, o := range opens {
			if o.l != nil {
				_ = o.l.closeNow()
			}
		}
		if admin != nil {
			admin.closeNow()
		}
		s.routes.unclaim(claimed) // the tables of listeners this relay does not run
		return fmt.Errorf("%w: %w", ErrNotApplied, errors.Join(errs...))
	}

	// From here the new configuration applies.
	if commit != nil {
		commit()
	}
	for _, name := range tcpOnly {
		s.log.Warn("mptcp: the kernel makes no Multipath TCP socket (is net.mptcp.enabled 0?): this listener still takes TCP only", "listener", name)
	}
	s.warnUnusedInherited(cfg)
	for _, w := range cfg.relayHopWarnings() {
		s.log.Warn(w)
	}
	if where := cfg.mptcpDials(false) + cfg.mptcpDials(true); where != "" {
		if err := noMPTCP(); err != nil {
			s.log.Warn("mptcp: the kernel makes no Multipath TCP socket (is net.mptcp.enabled 0?): legs that ask for it are dialed as TCP", "config", where, "err", err)
		}
	}
	sfOpts, sfWant := wantSubflows(cfg)
	s.loadSubflows(cfg, sfWant)
	for _, u := range updates {
		u.l.cur.Store(u.st)
		if !u.st.protos["convert"] {
			s.closeParked(u.l) // it takes no Convert hops any more
		}
		u.l.setKeepalive(cfg.Legs.Client.Keepalive.D())
		if u.rcvbuf != u.l.rcvbuf {
			if err := u.l.setReceiveBuffer(u.rcvbuf); err != nil {
				s.log.Warn("the listening socket's receive buffer: its connections scale their window for the previous one", "listener", u.l.cfg.Name, "err", err)
			}
		}
	}
	var handover []*listener // replaced by one that rebuilds their capture
	for _, l := range closing {
		name := l.cfg.Name
		if want[name] && installs[name] {
			// Replaced under the same name: its successor rebuilds its
			// capture table in one transaction (addTable). Its socket goes
			// now, for the successor's; its rules once the successor's are
			// in place (the table then goes with the last of both, as the
			// policy routes do), so that no flow meets a moment without.
			l.closeSocket()
			handover = append(handover, l)
		} else {
			// Removed, or replaced by one that installs no capture: its
			// rules stay while its flows last.
			errs = append(errs, l.close())
			if l.uncapture != nil && l.flows.Load() > 0 {
				s.retired[captureTable(name)] = l // until its last flow ends (flowDone)
			}
		}
		s.closeParked(l)
		delete(s.listeners, name)
	}
	if adminLeaves {
		s.admin.closeNow()
		s.admin = nil
		if adminTo == "off" {
			s.log.Info("admin API off")
		}
	}
	if adminMoves {
		if admin == nil {
			// Its port was a closing listener's.
			var err error
			if admin, err = s.startAdmin(adminTo); err != nil {
				errs = append(errs, err)
			}
		}
		s.admin = admin
	}
	for _, o := range opens {
		if o.l == nil {
			var err error
			if o.l, err = s.openListener(o.lc, cfg); err != nil {
				errs = append(errs, err)
				if o.old == nil {
					continue
				}
				// Its port or table was taken meanwhile: the previous
				// configuration, which held them a moment ago.
				if o.l, err = s.openListener(o.old.cfg, cfg); err != nil {
					errs = append(errs, fmt.Errorf("listener %s: its previous configuration: %w", o.lc.Name, err))
					continue
				}
				errs = append(errs, fmt.Errorf("listener %s: kept its previous configuration", o.lc.Name))
			}
		}
		s.listeners[o.lc.Name] = o.l
		s.acceptorWG.Add(1)
		go func() { defer s.acceptorWG.Done(); s.acceptLoop(o.l) }()
	}
	for _, l := range handover {
		errs = append(errs, l.close()) // its rules go now, or with its last flow
		if _, ok := s.listeners[l.cfg.Name]; !ok && l.uncapture != nil && l.flows.Load() > 0 {
			s.retired[captureTable(l.cfg.Name)] = l // no successor opened: as if removed
		}
	}
	s.applySubflows(cfg, sfOpts, sfWant)
	if err := s.applyEarly(); err != nil {
		errs = append(errs, err)
	}
	if cfg.DataPath == "sockmap" {
		// Loaded once, for the flows the configuration allows then.
		if err := datapath.EnableSockmap(cfg.Limits.MaxFlows, 0); err != nil {
			errs = append(errs, fmt.Errorf("data_path sockmap: %w", err))
		}
	}
	s.applyPools(cfg)
	if err := s.turbo.apply(cfg.Peers); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// listenerCount is the number of open listeners; a Reload may be at work.
func (s *Server) listenerCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners)
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, l := range s.listeners {
		if err := l.close(); err != nil {
			s.log.Error("closing listener", "listener", name, "err", err)
		}
		delete(s.listeners, name)
	}
}

// Drain stops accepting, waits up to grace for the flows to finish, then
// aborts what is left. Its error says what it could not remove (capture
// rules, turbo routes), which the host keeps.
func (s *Server) Drain(grace time.Duration) error {
	s.mu.Lock()
	s.drainMu.Lock()
	s.draining.Store(true)
	s.drainMu.Unlock()
	s.mu.Unlock()
	// Stop accepting. A listener with capture rules stays open, refusing
	// new flows with a reset, until its flows have ended: without its
	// socket the TPROXY rule would let new flows pass the relay by, and
	// established flows need the rules until they end. One on a socket
	// the service manager passed closes its duplicate only: the socket
	// stays open, and new flows wait in its queue for the next start.
	s.mu.Lock()
	var captured []*listener
	for name, l := range s.listeners {
		if l.uncapture != nil {
			captured = append(captured, l)
		}
		if l.uncapture == nil || l.inherited.IsValid() {
			l.closeSocket()
		}
		delete(s.listeners, name)
	}
	// Peers' pooled connections waiting for a request stop waiting:
	// those that carry one are served as flows, the rest close. This
	// relay's own pools stop.
	s.expireParked()
	s.stopEarly()
	s.mu.Unlock()
	s.closePools()
	n := s.active.Load()
	s.log.Info("draining", "flows", n, "grace", grace)
	done := make(chan struct{})
	go func() { s.flowsWG.Wait(); close(done) }()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("grace period over: closing flows", "flows", s.active.Load())
		s.abortFlows()
		<-done
	case <-s.hurry:
		s.log.Warn("told to hurry: closing flows", "flows", s.active.Load())
		s.abortFlows()
		<-done
	}
	s.abortFlows()
	var errs []error
	for _, l := range captured {
		errs = append(errs, l.close())
	}
	// The captures of listeners a reload removed or replaced went with
	// their last flows (flowDone), which only logged a failure: it is the
	// stop's too.
	s.mu.Lock()
	for _, l := range s.retired {
		errs = append(errs, l.uncapture())
	}
	errs = append(errs, s.uncaptureErrs...)
	s.mu.Unlock()
	s.acceptorWG.Wait()
	if err := s.turbo.apply(nil); err != nil {
		errs = append(errs, fmt.Errorf("removing turbo routes: %w", err))
	}
	s.closeSubflows()
	if s.admin != nil {
		s.admin.close()
	}
	datapath.Drain()
	s.log.Info("relay stopped")
	return errors.Join(errs...)
}

// Hurry ends a drain's grace period now, or the next drain's at its
// start: flows are closed at once, and the relay still removes its
// capture rules, routes and programs before Run returns.
func (s *Server) Hurry() {
	s.hurryOnce.Do(func() { close(s.hurry) })
}

// Addr returns the address a listener is bound to (useful with port 0).
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.listeners[name]; ok {
		return l.ln.Addr()
	}
	return nil
}

// AdminAddr returns the admin API's address, or nil.
func (s *Server) AdminAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return nil
	}
	return s.admin.ln.Addr()
}

// admit reserves a flow slot for a client, or says why it cannot;
// release gives an admitted flow's slot back, once.
func (s *Server) admit(client netip.Addr, exempt bool) (reason string) {
	t := s.state.Load().tunables
	s.drainMu.RLock()
	defer s.drainMu.RUnlock()
	if s.draining.Load() {
		return "draining"
	}
	if int(s.active.Add(1)) > t.MaxFlows {
		s.active.Add(-1)
		return "max_flows"
	}
	limit := t.MaxFlowsPerClient
	if exempt {
		limit = -1
	}
	if !s.table.take(perClientOf, clientKey(client), limit) {
		s.active.Add(-1)
		return "max_flows_per_client"
	}
	s.flowsWG.Add(1)
	return ""
}

func (s *Server) release(client netip.Addr) {
	s.table.give(perClientOf, clientKey(client))
	s.active.Add(-1)
	s.ended.Add(1)
	s.flowsWG.Done()
}

// beginHandshake reserves a place for a client still sending its protocol
// head: at most limits.max_handshakes in all, and an eighth of that per
// client, so one client cannot keep everyone else's handshakes out.
func (s *Server) beginHandshake(client netip.Addr) (end func(), ok bool) {
	limit := s.state.Load().cfg.Limits.MaxHandshakes
	if int(s.handshakes.Add(1)) > limit {
		s.handshakes.Add(-1)
		return nil, false
	}
	key := clientKey(client)
	if !s.table.take(hsClientOf, key, max(limit/8, 1)) {
		s.handshakes.Add(-1)
		return nil, false
	}
	return sync.OnceFunc(func() {
		s.table.give(hsClientOf, key)
		s.handshakes.Add(-1)
	}), true
}

// clientKey is what per-client limits count by: the address, or for IPv6
// its /64, which one subscriber usually holds whole.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// beginConnect reserves one of the pending connects; endConnect gives it back.
func (s *Server) beginConnect() bool {
	return s.reserveConnect(s.state.Load().tunables.MaxPending)
}

// reserveConnect reserves a pending connect while fewer than limit are.
func (s *Server) reserveConnect(limit int) bool {
	if s.pending.Add(1) > int64(limit) {
		s.pending.Add(-1)
		return false
	}
	return true
}

func (s *Server) endConnect() { s.pending.Add(-1) }

func (s *Server) register(f *flow) { s.table.add(f) }

// abortFlows ends every flow: those still connecting through the flows'
// context, those in their client's protocol head through a deadline long
// past, those forwarding through their data path.
func (s *Server) abortFlows() {
	s.cancelAll()
	s.table.each(func(f *flow) {
		if dp := f.dp.Load(); dp != nil {
			dp.Abort()
		} else if c := f.conn.Load(); c != nil {
			_ = c.SetDeadline(longAgo)
		}
	})
}

// longAgo is a deadline that has passed: it ends a wait at once.
var longAgo = time.Unix(1, 0)

// finish moves an ended flow's bytes from the active set to the totals in
// one step under its shard's lock (see metrics.bytes).
func (s *Server) finish(f *flow) {
	// The flow's own counters: they include bytes sent before the data
	// path ran (a Convert hop's early data) and equal what the bytes
	// collector showed while the flow was active.
	s.table.remove(f, func() { s.metrics.addEnded(f.listener, f.up.Load(), f.down.Load()) })
}

// logLevels maps config names to slog levels.
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// NewLogger makes the daemon's logger from the log section; a Reload
// of a server logging with it applies a changed log section.
func NewLogger(c LogConfig) *slog.Logger {
	h := &logHandler{}
	h.set(c)
	return slog.New(h)
}

// logHandler writes as the log section in force says: NewLogger's, then
// each reload's.
type logHandler struct{ h atomic.Pointer[slog.Handler] }

func (l *logHandler) set(c LogConfig) {
	opts := &slog.HandlerOptions{Level: logLevels[c.Level]}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if c.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	l.h.Store(&h)
}

func (l *logHandler) Enabled(ctx context.Context, lv slog.Level) bool {
	return (*l.h.Load()).Enabled(ctx, lv)
}

func (l *logHandler) Handle(ctx context.Context, r slog.Record) error {
	return (*l.h.Load()).Handle(ctx, r)
}

// WithAttrs and WithGroup derive from the handler in force: a logger made
// with them keeps its format and level.
func (l *logHandler) WithAttrs(as []slog.Attr) slog.Handler { return (*l.h.Load()).WithAttrs(as) }
func (l *logHandler) WithGroup(name string) slog.Handler    { return (*l.h.Load()).WithGroup(name) }

// errorf wraps an error with the operation, for flow logs.
func errorf(op string, err error) error { return fmt.Errorf("%s: %w", op, err) }
