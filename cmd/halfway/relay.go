package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"halfway/metrics"
	"halfway/relay"
)

func runRelay(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "rules" {
		return relayRules(args[1:], stdout, stderr)
	}
	fs := newFlags("relay", stderr)
	file := fs.String("c", "", "configuration file (YAML)")
	check := fs.Bool("check", false, "validate the configuration and exit")
	grace := fs.Duration("grace", 30*time.Second, "on SIGTERM, how long flows may finish before they are closed")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: relay -c FILE [--check] [--grace 30s]", errUsage)
	}
	if *grace < 0 {
		return fmt.Errorf("%w: relay: --grace %v: want 0 (close flows at once) or more", errUsage, *grace)
	}
	var hup chan os.Signal
	if !*check {
		// SIGHUP's default action ends the process. It is caught before
		// anything slow, so that a reload sent while the relay starts
		// (an ExecReload racing ExecStart) is applied once the relay is
		// ready rather than killing it.
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	cfg, err := relay.LoadConfig(*file)
	if err != nil {
		return err
	}
	if *check {
		fmt.Fprintf(stdout, "%s: configuration is valid (%d listeners, %d routes)\n", *file, len(cfg.Listeners), len(cfg.Routes))
		return nil
	}
	log := relay.NewLogger(cfg.Log)
	reg := metrics.NewRegistry()
	metrics.RegisterProcess(reg)
	srv, err := relay.New(cfg, log, reg)
	if err != nil {
		return err
	}
	// Listening sockets from systemd socket activation ($LISTEN_FDS): they
	// stay open while the relay restarts, so clients wait, not refused.
	if files := activation.Files(true); len(files) > 0 {
		if err := srv.Inherit(files); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal drains (ctx); a second closes the flows at once,
	// and the relay still removes its capture rules and routes; a third
	// ends the process there and then.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		<-signals
		srv.Hurry()
		signal.Stop(signals)
		stop()
	}()
	// Run stops on run, which serveSignals cancels once it has told the
	// service manager that the relay is stopping.
	run, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	go serveSignals(ctx, cancelRun, srv, hup, *file, log)
	exited := make(chan struct{})
	defer close(exited)
	go watchdog(exited, log)
	return srv.Run(run, *grace)
}

// watchdog pings systemd's watchdog (WatchdogSec=, which restarts a relay
// that stops pinging) at half its interval, from start to exit, a drain
// included, until exited is closed.
func watchdog(exited <-chan struct{}, log *slog.Logger) {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("sd_notify: watchdog", "err", err)
	}
	if every <= 0 {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-exited:
			return
		case <-t.C:
			notify(log, daemon.SdNotifyWatchdog)
		}
	}
}

// serveSignals tells a service manager (sd_notify) when the relay is
// ready, reloading and stopping, and applies each SIGHUP once the relay
// is ready. When ctx ends (a stop) it calls stop and returns.
func serveSignals(ctx context.Context, stop func(), srv *relay.Server, hup <-chan os.Signal, file string, log *slog.Logger) {
	defer stop()
	select {
	case <-srv.Started():
	case <-ctx.Done():
		return // a stop before Run started, or Run failed (runRelay returned)
	}
	notify(log, daemon.SdNotifyReady)
	for {
		select {
		case <-ctx.Done():
			notify(log, daemon.SdNotifyStopping)
			return
		case <-hup:
		}
		if ctx.Err() != nil {
			// A stop came with the SIGHUP: no reload to hold it up.
			notify(log, daemon.SdNotifyStopping)
			return
		}
		notify(log, reloading())
		next, err := relay.LoadConfig(file)
		switch {
		case err != nil:
			log.Error("reload refused: configuration invalid; the running one stays", "err", err)
		default:
			switch err = srv.Reload(next); {
			case errors.Is(err, relay.ErrNotApplied):
				log.Error("reload refused: the running configuration stays", "err", err)
			case err != nil:
				log.Error("reload incomplete", "err", err)
			}
		}
		status := "STATUS=running"
		if err != nil {
			status = "STATUS=last reload failed: " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		notify(log, daemon.SdNotifyReady+"\n"+status)
	}
}

// reloading is the sd_notify state that starts a reload: systemd (with
// Type=notify-reload, or any type since 253) waits for the READY=1 that
// ends it.
func reloading() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return daemon.SdNotifyReloading
	}
	return fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, ts.Nano()/1000)
}

// notify sends state to the service manager named by $NOTIFY_SOCKET, if
// any. A relay not started by one sends nothing.
func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// relayRules prints the packet rules that capture the transparent
// listeners' flows, for an operator who installs them by hand.
func relayRules(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("relay rules", stderr)
	file := fs.String("c", "", "configuration file (YAML)")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: relay rules -c FILE", errUsage)
	}
	cfg, err := relay.LoadConfig(*file)
	if err != nil {
		return err
	}
	rules, err := relay.Rules(cfg)
	if err != nil {
		return err
	}
	_, err = fmt.Fprint(stdout, rules)
	return err
}
