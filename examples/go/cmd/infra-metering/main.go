// Command infra-metering records compute seconds by provider and region for one account and prints
// its usage this period: in total, for one provider, for one provider in one region, and broken
// down by provider and region.
//
//	UNIMETER_ADDR=127.0.0.1:50051 go run ./cmd/infra-metering
package main

import (
	"context"
	"fmt"
	"log"
	"sort"
	"time"

	"github.com/unimeter/unimeter/examples/go/internal/infra"
	"github.com/unimeter/unimeter/examples/go/internal/unimeter"
)

const account = 42

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := unimeter.Dial(unimeter.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if _, err := unimeter.EnsureMetric(ctx, client, infra.Metric()); err != nil {
		unimeter.Fatal("create metric", err)
	}

	now := time.Now()
	runs := []infra.Usage{
		{Provider: "aws", Region: "us-east", Seconds: 45.0},
		{Provider: "aws", Region: "us-east", Seconds: 12.5},
		{Provider: "aws", Region: "europe", Seconds: 30.25},
		{Provider: "gcp", Region: "us-west", Seconds: 100},
	}
	for i := range runs {
		runs[i].ID = unimeter.NewEventID() // in production: the id of the VM run or job
		runs[i].Account = account
		runs[i].At = now
	}
	resp, err := infra.Record(ctx, client, runs)
	if err != nil {
		unimeter.Fatal("record", err)
	}
	fmt.Printf("recorded %d runs (%d duplicates)\n", resp.GetNStored(), resp.GetNDuplicates())

	queries := []struct {
		label   string
		filters map[string]string
	}{
		{"in total", nil},
		{"on aws", map[string]string{"provider": "aws"}},
		{"on aws in us-east", map[string]string{"provider": "aws", "region": "us-east"}},
	}
	for _, q := range queries {
		s, err := infra.Seconds(ctx, client, account, nil, q.filters)
		if err != nil {
			unimeter.Fatal("query", err)
		}
		fmt.Printf("compute seconds this period %-18s %14.6f\n", q.label+":", unimeter.Unscale(s))
	}
	fmt.Println("by provider and region:")
	groups, err := infra.Breakdown(ctx, client, account, nil, nil, "provider", "region")
	if err != nil {
		unimeter.Fatal("query", err)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  %-38s %14.6f\n", k, unimeter.Unscale(groups[k]))
	}
}
