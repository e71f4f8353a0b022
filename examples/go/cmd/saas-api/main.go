// Command saas-api serves an HTTP API whose every request is metered as one "api_requests" event
// (batched every 20 ms) and answered 402 once the account reaches the metric's hard_cap threshold
// in the current 30-day period (read from QueryRealtime's alert_flags).
//
//	UNIMETER_ADDR=127.0.0.1:50051 go run ./cmd/saas-api
//	curl -H 'X-Account-ID: 42' http://127.0.0.1:8080/v1/hello
//
// LISTEN_ADDR sets the HTTP address (default 127.0.0.1:8080). The cap is 1000 calls when the
// program creates the metric; an existing metric keeps its own.
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

	"github.com/unimeter/unimeter/examples/go/internal/saasapi"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

func main() {
	logger := log.New(os.Stderr, "saas-api: ", log.LstdFlags)
	listen := unimeter.Getenv("LISTEN_ADDR", "127.0.0.1:8080")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	client, err := unimeter.Dial(unimeter.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	setupCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	mw, err := saasapi.Setup(setupCtx, client, "api_requests", 1000, logger)
	cancel()
	if err != nil {
		unimeter.Fatal("setup", err)
	}

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
		_ = mw.Batcher.Close(shutdownCtx) // send what is still queued
	}()
	logger.Printf("serving on http://%s (Unimeter at %s)", listen, unimeter.Addr())
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Fatal(err)
	}
	<-stopped
}
