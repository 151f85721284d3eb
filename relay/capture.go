package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Transparent capture needs packet rules the relay does not own by
// default: nftables rules that steer the chosen flows to the listener and,
// for TPROXY, a policy route that delivers marked packets locally. Rules
// prints them for the operator; install: true has the relay add them at
// start and remove them at stop. Each listener gets its own nftables table,
// halfway_NAME, so removal touches nothing else.

// captureTable names a listener's nftables table.
func captureTable(name string) string {
	return "halfway_" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
			return r
		}
		return '_'
	}, name)
}

// The TPROXY fwmark and routing table a capture uses unless it names its
// own.
const (
	defaultCaptureMark  = 1
	defaultCaptureTable = 100
)

// markTable is the capture's mark and table; a CaptureConfig built in Go
// rather than decoded leaves them 0, for the defaults.
func (c *CaptureConfig) markTable() (int, int) {
	mark, table := c.Mark, c.Table
	if mark == 0 {
		mark = defaultCaptureMark
	}
	if table == 0 {
		table = defaultCaptureTable
	}
	return mark, table
}

// ownHostRule leaves alone the flows addressed to the relay's host itself
// (its admin API, its other services, connections over lo): they are not
// passing through, and the relay would refuse them as its own.
const ownHostRule = "\t\tfib daddr type local accept\n"

// transparentRule starts a rule that matches the packets of the relay's
// transparent sockets (those of the flows a tproxy listener took).
const transparentRule = "\t\tmeta l4proto tcp socket transparent 1 socket wildcard 0 "

// kept is what a capture table holds, beside its listener's own rules,
// for the flows of a listener of its name in the other mode that a reload
// replaced: the table is rebuilt for the new mode, and they still run.
type kept struct {
	// mark is a tproxy predecessor's: its flows' packets reach the
	// relay's transparent sockets only marked (its policy route delivers
	// them), and pass no nat rule of the redirect table.
	mark int
	// nat keeps a redirect predecessor's flows translated: the kernel
	// translates a connection only while some nat chain exists, and its
	// packets, to the address they were sent to, must pass the tproxy rule.
	nat bool
}

// nftRules is the ruleset (for `nft -f -`) that captures a listener's flows.
func nftRules(ln *ListenerConfig) (string, error) { return tableRules(ln, kept{}) }

// tableRules is nftRules with what the table keeps for its predecessors.
func tableRules(ln *ListenerConfig, k kept) (string, error) {
	c := ln.Capture
	if c == nil {
		return "", fmt.Errorf("listener %s: no capture section", ln.Name)
	}
	ap, err := netip.ParseAddrPort(ln.Listen)
	if err != nil {
		return "", err
	}
	// The listening socket is of one family (tcp4, or a v6-only tcp6):
	// flows of the other would be steered where nothing takes them.
	is4 := ap.Addr().Is4()
	var v4, v6 []string
	for _, d := range c.Dst {
		p, err := netip.ParsePrefix(d)
		if err != nil {
			return "", err
		}
		if p.Addr().Is4() != is4 {
			return "", fmt.Errorf("listener %s: capture dst %s: the listener at %s takes IPv%d flows only", ln.Name, d, ln.Listen, map[bool]int{true: 4, false: 6}[is4])
		}
		if p.Addr().Is4() {
			v4 = append(v4, p.Masked().String())
		} else {
			v6 = append(v6, p.Masked().String())
		}
	}
	ports := strings.ReplaceAll(c.Ports, " ", "")
	mark, _ := c.markTable()
	// Where captured flows go: a listener bound to one address must be
	// named, since without an address tproxy and redirect send them to the
	// incoming interface's, where it does not listen (tproxy then lets the
	// flow pass uncaptured; redirect has it refused). Redirect names its
	// address with dnat.
	to, nat := fmt.Sprintf(":%d", ap.Port()), "redirect to"
	if !ap.Addr().IsUnspecified() {
		to, nat = ap.String(), "dnat "+map[bool]string{true: "ip", false: "ip6"}[is4]+" to"
	}
	var b strings.Builder
	table := captureTable(ln.Name)
	switch ln.Mode {
	case "tproxy":
		fmt.Fprintf(&b, "table inet %s {\n\tchain prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n", table)
		if k.nat {
			b.WriteString("\t\tct status dnat accept\n")
		}
		// Packets of flows the relay already holds go straight to its socket.
		// Not a listener's on 0.0.0.0 or [::]: the lookup is by the packet's
		// destination, which such a socket matches on its port whatever the
		// address, and flows to any host on that port would be taken.
		fmt.Fprintf(&b, "%smeta mark set %d accept\n", transparentRule, mark)
		b.WriteString(ownHostRule)
		match := func(family string, cidrs []string) string {
			if len(cidrs) == 0 {
				return fmt.Sprintf("meta nfproto %s ", map[string]string{"ip": "ipv4", "ip6": "ipv6"}[family])
			}
			return fmt.Sprintf("%s daddr { %s } ", family, strings.Join(cidrs, ", "))
		}
		if is4 {
			fmt.Fprintf(&b, "\t\t%stcp dport { %s } tproxy ip to %s meta mark set %d accept\n", match("ip", v4), ports, to, mark)
		} else {
			fmt.Fprintf(&b, "\t\t%stcp dport { %s } tproxy ip6 to %s meta mark set %d accept\n", match("ip6", v6), ports, to, mark)
		}
		b.WriteString("\t}\n")
		if k.nat {
			b.WriteString("\tchain kept {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n")
		}
		b.WriteString("}\n")
	case "redirect":
		fmt.Fprintf(&b, "table inet %s {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n", table)
		if k.mark != 0 {
			// Conntrack, which may start only now (with this chain), takes
			// a tproxy predecessor's flow's next packet for a new
			// connection: accepted here, it is bound to no translation,
			// and tracked as established (as an input firewall wants).
			b.WriteString(transparentRule + "accept\n")
		}
		b.WriteString(ownHostRule)
		if len(v4) > 0 {
			fmt.Fprintf(&b, "\t\tip daddr { %s } tcp dport { %s } %s %s\n", strings.Join(v4, ", "), ports, nat, to)
		}
		if len(v6) > 0 {
			fmt.Fprintf(&b, "\t\tip6 daddr { %s } tcp dport { %s } %s %s\n", strings.Join(v6, ", "), ports, nat, to)
		}
		if len(v4) == 0 && len(v6) == 0 {
			fmt.Fprintf(&b, "\t\tmeta nfproto %s tcp dport { %s } %s %s\n", map[bool]string{true: "ipv4", false: "ipv6"}[is4], ports, nat, to)
		}
		b.WriteString("\t}\n")
		if k.mark != 0 {
			// Every packet, where its policy route takes it: the nat
			// chain sees only a connection's first.
			fmt.Fprintf(&b, "\tchain kept {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n%smeta mark set %d\n\t}\n", transparentRule, k.mark)
		}
		b.WriteString("}\n")
	default:
		return "", fmt.Errorf("listener %s: mode %s captures nothing", ln.Name, ln.Mode)
	}
	return b.String(), nil
}

// routeCommands are the policy-routing commands TPROXY needs.
func routeCommands(ln *ListenerConfig) [][]string {
	if ln.Mode != "tproxy" || ln.Capture == nil {
		return nil
	}
	mark, table := ln.Capture.markTable()
	m, t := fmt.Sprint(mark), fmt.Sprint(table)
	return [][]string{
		{"ip", "-4", "rule", "add", "fwmark", m, "lookup", t},
		{"ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", t},
		{"ip", "-6", "rule", "add", "fwmark", m, "lookup", t},
		{"ip", "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", t},
	}
}

// ipv6On tells whether this network namespace runs IPv6 at all.
func ipv6On() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// Rules prints, for every transparent listener with a capture section, the
// commands that capture its flows.
func Rules(cfg *Config) (string, error) {
	var b strings.Builder
	for i := range cfg.Listeners {
		ln := &cfg.Listeners[i]
		if ln.Capture == nil {
			continue
		}
		rules, err := nftRules(ln)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "# listener %s (%s on %s)\nnft -f - <<'EOF'\n%sEOF\n", ln.Name, ln.Mode, ln.Listen, rules)
		for _, c := range routeCommands(ln) {
			b.WriteString(strings.Join(c, " ") + "\n")
		}
		b.WriteString("\n")
	}
	if b.Len() == 0 {
		return "", fmt.Errorf("no transparent listener has a capture section")
	}
	return b.String(), nil
}

// policyRoutes counts the TPROXY listeners using each policy-routing
// command: listeners with one mark share its ip rule, and listeners with
// one table (whatever their marks) share its local route; each goes only
// with its last user.
type policyRoutes struct {
	mu    sync.Mutex
	users map[string]int // by command
	// ours are the capture tables of the listeners this relay has been
	// configured with: one of them that a killed run left behind sets no
	// other relay's mark.
	ours map[string]bool
	// tables orders the installs and removals of nftables tables, so
	// that a removal under way when a reload rebuilds the table cannot
	// delete the new one; under it, tableUsers holds by table the
	// listeners that installed it and have not removed it: a listener a
	// reload adds back (or replaces) rebuilds the table of its namesake,
	// whose flows still need it, and the table goes with the last of them.
	tables     sync.Mutex
	tableUsers map[string]*tableUse
}

// tableUse is a capture table's listeners: the table is made of the
// rules of the newest of them (last), and keeps for the others' flows
// what those rules lack (kept) while they hold it.
type tableUse struct {
	last  ListenerConfig
	users []*ListenerConfig
	kept  kept
}

// keeps is what the table must keep for its users not in last's mode.
func (u *tableUse) keeps() (k kept) {
	for _, ln := range u.users {
		switch {
		case ln.Mode == u.last.Mode:
		case ln.Mode == "tproxy":
			k.mark, _ = ln.Capture.markTable()
		case ln.Mode == "redirect":
			k.nat = true
		}
	}
	return k
}

// claim adds the capture tables cfg's listeners install to ours, and
// returns those it added, for unclaim if cfg is refused.
func (pr *policyRoutes) claim(cfg *Config) (added []string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.ours == nil {
		pr.ours = map[string]bool{}
	}
	for _, ln := range cfg.Listeners {
		if table := captureTable(ln.Name); ln.Capture != nil && ln.Capture.Install && !pr.ours[table] {
			pr.ours[table] = true
			added = append(added, table)
		}
	}
	return added
}

// unclaim takes the tables claim added back out of ours: a refused
// configuration's listeners are not this relay's, and a table of their
// names may be another relay's.
func (pr *policyRoutes) unclaim(added []string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for _, table := range added {
		delete(pr.ours, table)
	}
}

// installed returns the policy-routing commands this namespace runs for
// ln (the IPv6 ones only where IPv6 is on).
func installed(ln *ListenerConfig) (cmds [][]string) {
	for _, c := range routeCommands(ln) {
		if c[1] != "-6" || ipv6On() {
			cmds = append(cmds, c)
		}
	}
	return cmds
}

// acquire runs, or counts one more user of, the policy-routing commands
// ln needs, and returns them: IPv6 may be turned on or off before ln's
// release, which gives back these.
func (pr *policyRoutes) acquire(ln *ListenerConfig) ([][]string, error) {
	cmds := installed(ln)
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.users == nil {
		pr.users = map[string]int{}
	}
	for i, c := range cmds {
		k := strings.Join(c, " ")
		if pr.users[k] == 0 && c[2] == "rule" && adoptLeftoverRule(ln, c[1] == "-6", pr.ours) {
			pr.users[k]++
			continue
		}
		if pr.users[k] == 0 {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil && !(c[2] == "rule" && strings.Contains(string(out), "File exists")) { // a kernel that refuses duplicates: the rule is in place
				pr.releaseLocked(cmds[:i])
				return nil, fmt.Errorf("%s: %v: %s", k, err, strings.TrimSpace(string(out)))
			}
		}
		pr.users[k]++
	}
	return cmds, nil
}

// adoptLeftoverRule tells whether the policy rule ln needs (IPv6 or IPv4)
// is in place already, left by a relay that was killed: then it is taken
// over rather than added again. ip rule add refuses no duplicate, so a new
// one each start would leave one more rule after every kill. A rule is a
// leftover when no other halfway capture table on this host sets its mark
// (one that does is another relay's, which keeps its own rule; the tables
// of ours, this relay's listeners, are not another's); extra copies of it
// go.
func adoptLeftoverRule(ln *ListenerConfig, ipv6 bool, ours map[string]bool) bool {
	mark, table := ln.Capture.markTable()
	n, err := countRules(ipv6, mark, table)
	if err != nil || n == 0 || markedByOthers(mark, captureTable(ln.Name), ours) {
		return false
	}
	family := map[bool]string{false: "-4", true: "-6"}[ipv6]
	for ; n > 1; n-- {
		if exec.Command("ip", family, "rule", "del", "fwmark", strconv.Itoa(mark), "lookup", strconv.Itoa(table)).Run() != nil {
			break
		}
	}
	return true
}

// markedByOthers tells whether a halfway capture table other than own
// and ours sets mark (when nft cannot tell, it assumes so).
func markedByOthers(mark int, own string, ours map[string]bool) bool {
	out, err := exec.Command("nft", "list", "tables", "inet").Output()
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "table inet ")
		if !ok || !strings.HasPrefix(name, "halfway_") || name == own || ours[name] {
			continue
		}
		rules, err := exec.Command("nft", "list", "table", "inet", name).Output()
		if err != nil || strings.Contains(string(rules), fmt.Sprintf("meta mark set 0x%08x ", mark)) {
			return true
		}
	}
	return false
}

// release gives back the commands acquire returned.
func (pr *policyRoutes) release(cmds [][]string) error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.releaseLocked(cmds)
}

// releaseLocked gives back cmds, removing what no listener uses any more
// (under pr.mu).
func (pr *policyRoutes) releaseLocked(cmds [][]string) error {
	var errs []string
	for _, c := range cmds {
		k := strings.Join(c, " ")
		if pr.users[k]--; pr.users[k] > 0 {
			continue
		}
		delete(pr.users, k)
		if c[2] == "route" {
			// ip rule add makes a rule of its own for every relay, even
			// an identical one, but a table has one local route: it goes
			// only with the last rule that looks it up (another relay on
			// this host may use it too).
			table, _ := strconv.Atoi(c[len(c)-1])
			used, err := countRules(c[1] == "-6", -1, table)
			if err != nil {
				errs = append(errs, err.Error())
			}
			if used > 0 || err != nil {
				continue
			}
			if c[1] == "-6" && !ipv6On() {
				continue // turned off since: the kernel took lo's IPv6 routes with it
			}
		}
		del := append([]string{}, c...)
		del[3] = "del" // "add" for rules, "replace" for routes
		if out, err := exec.Command(del[0], del[1:]...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %s", strings.Join(del, " "), strings.TrimSpace(string(out))))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove policy routes: %s", strings.Join(errs, "; "))
	}
	return nil
}

// installCapture adds a listener's rules; remove takes them away again
// (the nftables table only once no other listener that installed it
// still holds it).
func installCapture(ln *ListenerConfig, routes *policyRoutes) (remove func() error, err error) {
	own := *ln // the table's users are told apart by address
	ln = &own
	if err := routes.addTable(ln); err != nil {
		return nil, err
	}
	cmds, err := routes.acquire(ln)
	if err != nil {
		_ = routes.dropTable(ln)
		return nil, err
	}
	var once sync.Once
	var rerr error
	return func() error {
		once.Do(func() {
			if err := errors.Join(routes.dropTable(ln), routes.release(cmds)); err != nil {
				rerr = fmt.Errorf("remove capture of %s: %w", ln.Name, err)
			}
		})
		return rerr
	}, nil
}

// addTable (re)builds ln's nftables table from its rules, keeping what
// its other users need, and adds ln to them.
func (pr *policyRoutes) addTable(ln *ListenerConfig) error {
	pr.tables.Lock()
	defer pr.tables.Unlock()
	table := captureTable(ln.Name)
	u := &tableUse{last: *ln}
	if old := pr.tableUsers[table]; old != nil {
		u.users = slices.Clone(old.users)
	}
	u.users = append(u.users, ln)
	if err := replaceTable(table, u); err != nil {
		return err
	}
	if pr.tableUsers == nil {
		pr.tableUsers = map[string]*tableUse{}
	}
	pr.tableUsers[table] = u
	return nil
}

// replaceTable builds the table from u's last listener's rules and what
// it keeps for the others.
func replaceTable(table string, u *tableUse) error {
	k := u.keeps()
	rules, err := tableRules(&u.last, k)
	if err != nil {
		return err
	}
	// A table left by a crash, or by a listener of this name (removed,
	// or replaced by this one), is replaced, not duplicated: in one
	// transaction (nft applies a file as one), so that no packet meets
	// the moment without it. "add" makes the table the delete needs.
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf("add table inet %[1]s\ndelete table inet %[1]s\n%s", table, rules))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("install nftables table %s: %v: %s", table, err, strings.TrimSpace(string(out)))
	}
	u.kept = k
	return nil
}

// dropTable takes ln from its nftables table's users: the table is
// rebuilt without what it kept for ln alone, and deleted after the last.
func (pr *policyRoutes) dropTable(ln *ListenerConfig) error {
	pr.tables.Lock()
	defer pr.tables.Unlock()
	table := captureTable(ln.Name)
	u := pr.tableUsers[table]
	if u == nil {
		return nil
	}
	// The table is made of the rules of the last user to install it.
	wasLast := len(u.users) > 0 && u.users[len(u.users)-1] == ln
	u.users = slices.DeleteFunc(u.users, func(o *ListenerConfig) bool { return o == ln })
	if len(u.users) > 0 {
		if wasLast {
			// Its rules (their mark, whose policy route goes with it) are
			// no other user's: the table is rebuilt from the newest left.
			u.last = *u.users[len(u.users)-1]
		} else if u.keeps() == u.kept {
			return nil
		}
		return replaceTable(table, u)
	}
	delete(pr.tableUsers, table)
	if out, err := exec.Command("nft", "delete", "table", "inet", table).CombinedOutput(); err != nil {
		return fmt.Errorf("nft delete table inet %s: %s", table, strings.TrimSpace(string(out)))
	}
	return nil
}
