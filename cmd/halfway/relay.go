package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			next, err := relay.LoadConfig(*file)
			if err != nil {
				log.Error("reload refused: configuration invalid; the running one stays", "err", err)
				continue
			}
			switch err := srv.Reload(next); {
			case errors.Is(err, relay.ErrNotApplied):
				log.Error("reload refused: the running configuration stays", "err", err)
			case err != nil:
				log.Error("reload incomplete", "err", err)
			}
		}
	}()
	return srv.Run(ctx, *grace)
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
