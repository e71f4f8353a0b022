// Command free-tier-alerts serves an HTTP API metered on the "api_calls" metric (free tier 10,000
// calls, hard cap 100,000 per 30-day period). A live AlertSubscribe stream feeds a local over-cap
// cache: "free_tier_exceeded" prints an upgrade email, "hard_cap" makes every further request of
// the account a 402 without asking the server. The stream's resume offsets and the cache are saved
// to a state file, so a restarted program receives the alerts it missed and keeps enforcing.
//
//	UNIMETER_ADDR=127.0.0.1:50051 go run ./cmd/free-tier-alerts
//	curl -H 'X-Account-ID: 42' http://127.0.0.1:8081/v1/hello
//
// LISTEN_ADDR sets the HTTP address (default 127.0.0.1:8081), STATE_FILE the state file (default
// free-tier-alerts.state.json).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
	"github.com/unimeter/unimeter/examples/go/internal/freetier"
	"github.com/unimeter/unimeter/examples/go/internal/saasapi"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

func main() {
	logger := log.New(os.Stderr, "free-tier-alerts: ", log.LstdFlags)
	listen := unimeter.Getenv("LISTEN_ADDR", "127.0.0.1:8081")
	statePath := unimeter.Getenv("STATE_FILE", "free-tier-alerts.state.json")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	client, err := unimeter.Dial(unimeter.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	setupCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	metric, err := unimeter.EnsureMetric(setupCtx, client, freetier.Metric(10_000, 100_000))
	cancel()
	if err != nil {
		unimeter.Fatal("create metric", err)
	}

	enforcer, err := freetier.NewEnforcer(client, metric, statePath)
	if err != nil {
		logger.Fatal(err)
	}
	enforcer.Log = logger
	enforcer.OnAlert = func(a *pb.Alert) {
		switch a.GetThresholdCode() {
		case freetier.FreeTierExceeded:
			logger.Printf("account %d used its free tier (%d calls): sending the upgrade email", a.GetAccountId(), a.GetValueAtCross())
		case freetier.HardCap:
			logger.Printf("account %d reached its hard cap (%d calls): blocked until the period ends", a.GetAccountId(), a.GetValueAtCross())
		}
	}
	go func() {
		if err := enforcer.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			unimeter.Fatal("alert stream", err)
		}
	}()

	flusher := batcher.New(client.Ingest, batcher.Config{Window: 20 * time.Millisecond, Log: logger.Writer()})
	mw := &saasapi.Middleware{Batcher: flusher, Limiter: enforcer, Metric: freetier.MetricCode, Log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello, account %s\n", r.Header.Get(saasapi.AccountHeader))
	})
	srv := &http.Server{Addr: listen, Handler: mw.Wrap(mux), ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		_ = flusher.Close(shutdownCtx)
	}()
	logger.Printf("serving on http://%s (Unimeter at %s, state in %s)", listen, unimeter.Addr(), statePath)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Fatal(err)
	}
	<-stopped
}
