package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"halfway/netlab"
	"halfway/netlab/linkem"
)

func runLab(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: lab needs a subcommand: up, exec, status or down", errUsage)
	}
	switch args[0] {
	case "up":
		return labUp(args[1:], stdout, stderr)
	case "down":
		return labDown(args[1:], stdout, stderr)
	case "status":
		return labStatus(args[1:], stdout, stderr)
	case "exec":
		return labExec(args[1:], stderr)
	case "emulate":
		return labEmulate(args[1:], stdout, stderr)
	}
	if isHelp(args[0]) {
		subcommandHelp(stdout, "lab")
		return nil
	}
	return fmt.Errorf("%w: unknown lab subcommand %q", errUsage, args[0])
}

func labUp(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lab up", stderr)
	fg := fs.Bool("foreground", false, "run the emulators in this process and remove the lab on Ctrl-C or SIGTERM")
	rt := fs.Bool("realtime", true, "run the emulators' reader and writer threads SCHED_FIFO for precise delays")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: lab up FILE", errUsage)
	}
	t, err := netlab.LoadTopology(fs.Arg(0))
	if err != nil {
		return err
	}
	file, _ := filepath.Abs(fs.Arg(0))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lab, err := netlab.Up(ctx, t, netlab.Options{Detach: !*fg, Realtime: *rt, File: file})
	if err != nil {
		return err
	}
	printLab(stdout, t, lab.Plan, nil)
	if !*fg {
		lab.Release()
		fmt.Fprintf(stdout, "\nlab %s is up (emulator pid %d). Try:\n  halfway lab exec %s -- ping -c 3 %s\n  halfway lab down %s\n",
			t.Name, lab.DaemonPID(), t.Nodes[0].Name, t.Nodes[len(t.Nodes)-1].Name, t.Name)
		return nil
	}
	fmt.Fprintf(stdout, "\nlab %s is up in the foreground; Ctrl-C removes it.\n", t.Name)
	select {
	case <-ctx.Done():
		return lab.Close()
	case err := <-lab.Err():
		return errors.Join(fmt.Errorf("lab %s: link emulator failed: %w", t.Name, err), lab.Close())
	}
}

func labDown(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lab down", stderr)
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	switch fs.NArg() {
	case 0:
		if err := netlab.DownAll(); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "all labs removed")
		return nil
	case 1:
	default:
		return fmt.Errorf("%w: lab down [FILE|NAME]", errUsage)
	}
	name := fs.Arg(0)
	if _, err := os.Stat(name); err == nil {
		t, err := netlab.LoadTopology(name)
		if err != nil {
			return err
		}
		name = t.Name
	}
	// The named lab first: if it is stale, a sweep would remove it too
	// and Down would then call it not found.
	err := netlab.Down(name)
	// A lab left by a crashed run goes too, whatever its name.
	if err := netlab.Sweep(); err != nil {
		fmt.Fprintf(stderr, "halfway: removing stale labs: %v\n", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab %s removed\n", name)
	return nil
}

func labStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lab status", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	labs, err := netlab.List(true)
	if err != nil {
		return err
	}
	if fs.NArg() == 1 {
		var sel []netlab.Status
		for _, s := range labs {
			if s.Name == fs.Arg(0) {
				sel = append(sel, s)
			}
		}
		if len(sel) == 0 {
			return fmt.Errorf("lab %s: %w", fs.Arg(0), netlab.ErrNotFound)
		}
		labs = sel
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(labs)
	}
	if len(labs) == 0 {
		fmt.Fprintln(stdout, "no labs are up")
		return nil
	}
	for i, s := range labs {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		state := "up"
		switch {
		case s.Topo == nil:
			state = "stale"
		case !s.Alive:
			state = fmt.Sprintf("stale (owner pid %d is gone; the next up or down removes it)", s.Owner)
		case s.Daemon:
			state = fmt.Sprintf("up, emulator pid %d", s.Owner)
		default:
			state = fmt.Sprintf("up, emulators in pid %d", s.Owner)
		}
		fmt.Fprintf(stdout, "lab %s: %s\n", s.Name, state)
		if s.File != "" {
			fmt.Fprintf(stdout, "  file %s, since %s\n", s.File, s.Created.Local().Format("2006-01-02 15:04:05"))
		}
		if s.Err != "" {
			fmt.Fprintf(stdout, "  %s\n", s.Err)
		}
		if s.Topo != nil {
			printLab(stdout, s.Topo, s.Plan, s.Links)
		}
	}
	return nil
}

// printLab shows hosts with addresses and links with settings and counters.
func printLab(w io.Writer, t *netlab.Topology, p *netlab.Plan, stats []netlab.LinkStats) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  HOST\tNAMESPACE\tADDRESSES")
	for _, h := range p.Hosts {
		var addrs []string
		for _, ifc := range h.Ifaces {
			a := fmt.Sprintf("%s %s", ifc.Name, ifc.Addr4)
			if ifc.Addr6.IsValid() {
				a += " " + ifc.Addr6.String()
			}
			addrs = append(addrs, a+" → "+ifc.Peer)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", h.Name, h.NS, strings.Join(addrs, "; "))
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	hdr := "  LINK\tDIR\tDELAY\tJITTER\tRATE\tLOSS\tQUEUE"
	if stats != nil {
		hdr += "\tPACKETS\tIP BYTES\tLOST\tQUEUE DROPS\tEMULATOR LOST\tLATE ≥1ms\tLATE ≥4ms\tMAX LATE"
	}
	fmt.Fprintln(tw, "\n"+hdr)
	for i, l := range t.Links {
		ab, ba := l.Params()
		for d, prm := range []linkem.Params{ab, ba} {
			dir := l.A + "→" + l.B
			if d == 1 {
				dir = l.B + "→" + l.A
			}
			rate := netlab.Rate(prm.Rate).String()
			line := fmt.Sprintf("  %d\t%s\t%v\t%v\t%s\t%s\t%s", i, dir, prm.Delay, prm.Jitter, rate,
				netlab.Percent(prm.Loss), netlab.QueueLimit{Bytes: prm.QueueBytes, Time: prm.QueueTime})
			if i < len(stats) {
				s := stats[i].AB
				if d == 1 {
					s = stats[i].BA
				}
				// EMULATOR LOST: frames no link was configured to lose.
				line += fmt.Sprintf("\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%v", s.TxPackets, s.TxIPBytes, s.DropLoss, s.DropQueue,
					s.DropSocket+s.DropOverflow+s.Truncated+s.SendErrors, s.Late1ms, s.Late4ms, time.Duration(s.MaxLateNS).Round(10*time.Microsecond))
			}
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
}

func labExec(args []string, stderr io.Writer) error {
	fs := newFlags("lab exec", stderr)
	name := fs.String("lab", "", "lab name (default: the only lab that is up)")
	if err := parseFlags(fs, args, 1<<30); err != nil { // NODE -- CMD [ARGS...]
		return err
	}
	rest := fs.Args()
	if len(rest) < 2 {
		return fmt.Errorf("%w: lab exec [--lab NAME] NODE -- CMD [ARGS...]", errUsage)
	}
	node, cmd := rest[0], rest[1:]
	if cmd[0] == "--" {
		cmd = cmd[1:]
	}
	if len(cmd) == 0 {
		return fmt.Errorf("%w: lab exec NODE -- CMD: no command", errUsage)
	}
	labName, err := pickLab(*name)
	if err != nil {
		return err
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return fmt.Errorf("lab exec needs iproute2's ip: %w", err)
	}
	labs, err := netlab.List(false)
	if err != nil {
		return err
	}
	for _, s := range labs {
		if s.Name == labName && s.Plan != nil {
			if h := s.Plan.Host(node); h != nil {
				// ip netns exec also mounts the lab's /etc/hosts for the command.
				argv := append([]string{"ip", "netns", "exec", h.NS}, cmd...)
				return syscall.Exec(ip, argv, os.Environ())
			}
			return fmt.Errorf("lab %s has no node %q", labName, node)
		}
	}
	return fmt.Errorf("lab %s: %w", labName, netlab.ErrNotFound)
}

// pickLab returns name, or the only live lab when name is empty.
func pickLab(name string) (string, error) {
	if name != "" {
		return name, nil
	}
	labs, err := netlab.List(false)
	if err != nil {
		return "", err
	}
	var live []string
	for _, s := range labs {
		if s.Alive {
			live = append(live, s.Name)
		}
	}
	switch len(live) {
	case 0:
		return "", errors.New("no lab is up: start one with halfway lab up FILE")
	case 1:
		return live[0], nil
	}
	return "", fmt.Errorf("%w: several labs are up (%s): pick one with --lab NAME", errUsage, strings.Join(live, ", "))
}

// labEmulate is the daemon that `lab up` starts in the lab's wire namespace.
func labEmulate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lab emulate", stderr)
	rt := fs.Bool("realtime", false, "SCHED_FIFO reader and writer threads")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: lab emulate NAME (started by lab up)", errUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return netlab.Emulate(ctx, fs.Arg(0), linkem.Options{Realtime: *rt}, func() {
		fmt.Fprintln(stdout, "ready")
		if f, ok := stdout.(*os.File); ok {
			// Nothing more goes to the parent, which stops reading.
			devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err == nil {
				_ = syscall.Dup2(int(devnull.Fd()), int(f.Fd()))
				devnull.Close()
			}
		}
	})
}
