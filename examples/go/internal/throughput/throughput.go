// Package throughput is the high-throughput example: usage records read from a queue (Kafka, SQS,
// ...) go through a buffered flusher (package batcher) that drains a channel into batches of up to
// 1000 events every 20 ms.
//
// Each event's EventId is the queue's message id, and a message is acknowledged to the queue only
// once the batch holding it is stored. So every way of sending twice is harmless: the flusher
// retrying a batch whose acknowledgement was lost, or the queue redelivering messages that were
// not acknowledged before a crash; the server reports those events as duplicates.
package throughput

import (
	"context"
	"time"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
	"github.com/unimeter/unimeter/examples/go/internal/batcher"
)

// MetricCode is the metric of this example.
const MetricCode = "bytes_transferred"

// Metric sums transferred bytes.
func Metric() *pb.Metric {
	return &pb.Metric{Code: MetricCode, AggType: pb.AggType_AGG_TYPE_SUM}
}

// Message is one usage record as a queue delivers it.
type Message struct {
	ID      string // the queue's message id: the event id
	Account uint64
	Bytes   uint64
	At      time.Time
	Ack     func(err error) // tells the queue: nil = done, otherwise redeliver later
}

// Event is the message as an Ingest event.
func (m Message) Event() *pb.Event {
	return &pb.Event{
		AccountId: m.Account, MetricCode: MetricCode, Value: m.Bytes, TimeUnixNano: m.At.UnixNano(), EventId: m.ID,
	}
}

// Consume moves messages from src into the flusher until src is closed or ctx is done; each message
// is acknowledged once its batch is stored (or with the error that stopped it).
func Consume(ctx context.Context, src <-chan Message, flusher *batcher.Batcher) error {
	for {
		select {
		case m, ok := <-src:
			if !ok {
				return nil
			}
			if err := flusher.Add(ctx, m.Event(), m.Ack); err != nil {
				if m.Ack != nil {
					m.Ack(err)
				}
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
