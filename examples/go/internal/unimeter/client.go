// Package unimeter is the small amount of code every example shares: dialing the server, creating a
// metric if it is absent, retrying with exponential backoff, reading rich error details, and the
// fixed-point helpers of the wire protocol. Everything else is the generated stubs.
package unimeter

import (
	"context"
	"fmt"
	"math"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
)

// DefaultAddr is the server address used when UNIMETER_ADDR is not set.
const DefaultAddr = "127.0.0.1:50051"

// Addr returns the server address from UNIMETER_ADDR, or DefaultAddr.
func Addr() string { return Getenv("UNIMETER_ADDR", DefaultAddr) }

// Getenv returns the environment variable name, or def when it is unset or empty.
func Getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Client holds one connection and a stub per service. It is safe for concurrent use: share one
// per process, created at startup and closed at shutdown.
type Client struct {
	Conn    *grpc.ClientConn
	Metrics pb.MetricsServiceClient
	Ingest  pb.IngestServiceClient
	Query   pb.QueryServiceClient
	Alerts  pb.AlertServiceClient
}

// Dial connects to a Unimeter server (plaintext; add credentials through opts in production).
// The connection is made lazily, on the first call.
func Dial(addr string, opts ...grpc.DialOption) (*Client, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return &Client{
		Conn:    conn,
		Metrics: pb.NewMetricsServiceClient(conn),
		Ingest:  pb.NewIngestServiceClient(conn),
		Query:   pb.NewQueryServiceClient(conn),
		Alerts:  pb.NewAlertServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// EnsureMetric registers m, treating codes.AlreadyExists as success (the metric is durable and
// cluster-wide, so every instance of a service may call this at startup). It returns the metric
// as stored: the created one, or the existing one read back with GetMetric. An existing metric is
// not compared with m: changing a definition means deleting the metric and creating it again.
func EnsureMetric(ctx context.Context, c *Client, m *pb.Metric) (*pb.Metric, error) {
	var stored *pb.Metric
	err := Retry(ctx, DefaultBackoff, func(ctx context.Context) error {
		resp, err := c.Metrics.CreateMetric(ctx, &pb.CreateMetricRequest{Metric: m})
		if err == nil {
			stored = resp.GetMetric()
			return nil
		}
		if status.Code(err) != codes.AlreadyExists {
			return err
		}
		got, err := c.Metrics.GetMetric(ctx, &pb.GetMetricRequest{Code: m.GetCode()})
		if err != nil {
			return err
		}
		stored = got.GetMetric()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create metric %q: %w", m.GetCode(), err)
	}
	return stored, nil
}

// Ingest sends one batch, retrying Unavailable and ResourceExhausted with backoff. Give every
// event an EventId (or its own time) before calling it: a retry after a lost acknowledgement is
// then reported as duplicates instead of being counted twice.
func Ingest(ctx context.Context, c *Client, events []*pb.Event) (*pb.IngestResponse, error) {
	var resp *pb.IngestResponse
	err := Retry(ctx, DefaultBackoff, func(ctx context.Context) error {
		var err error
		resp, err = c.Ingest.Ingest(ctx, &pb.IngestRequest{Events: events})
		return err
	})
	return resp, err
}

// ScaleFactor is the fixed-point factor of fractional values: six decimal places.
const ScaleFactor = 1_000_000

// Scale converts a non-negative quantity to the wire's fixed-point units, rounding to six decimals:
// Scale(45.0) == 45_000_000.
func Scale(f float64) uint64 {
	if f <= 0 || math.IsNaN(f) {
		return 0
	}
	return uint64(math.Round(f * ScaleFactor))
}

// Unscale converts a fixed-point aggregate (sum, value; these may be negative after corrections)
// back to a float: Unscale(45_000_000) == 45.0.
func Unscale(v int64) float64 { return float64(v) / ScaleFactor }

// Range is the half-open period [start, end) of an explicit query.
func Range(start, end time.Time) *pb.Period {
	return &pb.Period{StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano()}
}
