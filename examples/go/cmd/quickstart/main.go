package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/unimeter/unimeter/examples/go/gen/unimeter/v1"
)

func main() {
	addr := os.Getenv("UNIMETER_ADDR")
	if addr == "" {
		addr = "127.0.0.1:50051"
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	metrics := pb.NewMetricsServiceClient(conn)
	ingest := pb.NewIngestServiceClient(conn)
	query := pb.NewQueryServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Register the metric once; AlreadyExists means another run or instance did.
	_, err = metrics.CreateMetric(ctx, &pb.CreateMetricRequest{Metric: &pb.Metric{
		Code:    "api_calls",
		AggType: pb.AggType_AGG_TYPE_COUNT,
	}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		log.Fatal(err)
	}

	result, err := ingest.Ingest(ctx, &pb.IngestRequest{Events: []*pb.Event{{
		AccountId:  42,
		MetricCode: "api_calls",
		Value:      1,
		EventId:    fmt.Sprintf("call-%d", time.Now().UnixNano()), // your request id: resends are deduplicated
	}}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("stored %d event(s), offset %d\n", result.GetNStored(), result.GetOffsets()[0])

	usage, err := query.QueryRealtime(ctx, &pb.QueryRealtimeRequest{AccountId: 42, MetricCode: "api_calls"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("account 42 has made %d calls this period\n", usage.GetValue().GetCount())
}
