// Command high-throughput drains a simulated queue of 100,000 usage records through a buffered
// flusher (batches of up to 1000 events every 20 ms), acknowledging each record once stored, then
// simulates the queue redelivering its last 1000 records after a crash: they are reported as
// duplicates and the totals do not move.
//
//	UNIMETER_ADDR=127.0.0.1:50051 go run ./cmd/high-throughput
package main

import (
	"context"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
	"github.com/unimeter/unimeter/examples/go/internal/throughput"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

const (
	records  = 100_000
	accounts = 100
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := unimeter.Dial(unimeter.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if _, err := unimeter.EnsureMetric(ctx, client, throughput.Metric()); err != nil {
		unimeter.Fatal("create metric", err)
	}

	run := unimeter.NewEventID() // message ids unique to this run of the demo
	messages := make([]throughput.Message, records)
	var acked, failed atomic.Int64
	for i := range messages {
		messages[i] = throughput.Message{
			ID: fmt.Sprintf("%s/%d", run, i), Account: uint64(i%accounts + 1), Bytes: 1500, At: time.Now(),
			Ack: func(err error) {
				if err != nil {
					failed.Add(1)
				} else {
					acked.Add(1)
				}
			},
		}
	}

	var batches, duplicates atomic.Int64
	flusher := batcher.New(client.Ingest, batcher.Config{
		MaxBatch: 1000, Window: 20 * time.Millisecond,
		OnFlush: func(f batcher.Flush) {
			batches.Add(1)
			duplicates.Add(int64(f.Response.GetNDuplicates()))
			if f.Err != nil {
				unimeter.PrintError(log.Writer(), "flush", f.Err)
			}
		},
	})
	start := time.Now()
	if err := throughput.Consume(ctx, feed(messages), flusher); err != nil {
		log.Fatal(err)
	}
	// The "crash": the last 1000 records were stored but their acknowledgements never reached the
	// queue, so it delivers them again.
	if err := throughput.Consume(ctx, feed(messages[records-1000:]), flusher); err != nil {
		log.Fatal(err)
	}
	if err := flusher.Close(ctx); err != nil {
		log.Fatal(err)
	}
	took := time.Since(start)
	fmt.Printf("%d records (+1000 redelivered) in %d batches, %.0f events/s; acked %d, failed %d, duplicates %d\n",
		records, batches.Load(), float64(records+1000)/took.Seconds(), acked.Load(), failed.Load(), duplicates.Load())

	r, err := client.Query.QueryRealtime(ctx, &pb.QueryRealtimeRequest{AccountId: 1, MetricCode: throughput.MetricCode})
	if err != nil {
		unimeter.Fatal("query", err)
	}
	fmt.Printf("account 1: %d bytes in %d events this period\n", r.GetValue().GetSum(), r.GetValue().GetCount())
}

// feed delivers messages on a channel, as a queue consumer library would.
func feed(messages []throughput.Message) <-chan throughput.Message {
	ch := make(chan throughput.Message, 1000)
	go func() {
		defer close(ch)
		for _, m := range messages {
			ch <- m
		}
	}()
	return ch
}
