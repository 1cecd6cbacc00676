// cni-driver calls CNI plugins the way containerd does: through libcni, the
// reference runtime library. hybridway's tests use it to drive hybridway-cni (and
// the reference bridge + host-local plugins for the benchmark baseline).
//
//	cni-driver [flags] add|check|del ID NETNS
//	cni-driver [flags] gc ID/IFNAME,...      (the attachments that stay valid)
//	cni-driver [flags] status
//	cni-driver [flags] bench FILE            (one netns path per line: ADD then DEL each)
//
// Results (ADD) are printed as JSON on stdout, already parsed and re-encoded by
// libcni, so a result that libcni cannot read fails here. A failure prints
// {"error":{"code":N,"msg":"..."}} on stdout and exits with status 2.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	conflist := flag.String("conflist", "", "network configuration list file")
	cniPath := flag.String("cni-path", "", "directories holding the plugins, ':'-separated")
	cacheDir := flag.String("cache-dir", "", "libcni's result cache (as containerd's /var/lib/cni)")
	ifname := flag.String("ifname", "eth0", "interface name inside the pod")
	portMap := flag.String("port-map", "", "hostPort:containerPort (TCP) passed as the portMappings capability")
	flag.Parse()
	args := flag.Args()
	if *conflist == "" || len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: cni-driver -conflist F -cni-path P [-cache-dir D] add|check|del|gc|status|bench ...")
		os.Exit(64)
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(*cniPath, ":"), *cacheDir, nil)
	ctx := context.Background()
	rt := func(id, netns string) *libcni.RuntimeConf {
		r := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: *ifname}
		if *portMap != "" {
			var host, cont int
			if _, err := fmt.Sscanf(*portMap, "%d:%d", &host, &cont); err != nil {
				fail(fmt.Errorf("-port-map %q: %w", *portMap, err))
			}
			r.CapabilityArgs = map[string]interface{}{
				"portMappings": []map[string]interface{}{
					{"hostPort": host, "containerPort": cont, "protocol": "tcp"},
				},
			}
		}
		return r
	}
	need := func(n int) {
		if len(args) < n+1 {
			fail(fmt.Errorf("%s needs %d arguments", args[0], n))
		}
	}
	switch args[0] {
	case "add":
		need(2)
		res, err := cni.AddNetworkList(ctx, list, rt(args[1], args[2]))
		if err != nil {
			fail(err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(out))
	case "check":
		need(2)
		if err := cni.CheckNetworkList(ctx, list, rt(args[1], args[2])); err != nil {
			fail(err)
		}
		fmt.Println("{}")
	case "del":
		need(2)
		if err := cni.DelNetworkList(ctx, list, rt(args[1], args[2])); err != nil {
			fail(err)
		}
		fmt.Println("{}")
	case "gc":
		var valid []types.GCAttachment
		if len(args) > 1 && args[1] != "" {
			for _, a := range strings.Split(args[1], ",") {
				id, ifn, ok := strings.Cut(a, "/")
				if !ok {
					fail(fmt.Errorf("gc: %q is not ID/IFNAME", a))
				}
				valid = append(valid, types.GCAttachment{ContainerID: id, IfName: ifn})
			}
		}
		if err := cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
			fail(err)
		}
		fmt.Println("{}")
	case "status":
		if err := cni.GetStatusNetworkList(ctx, list); err != nil {
			fail(err)
		}
		fmt.Println("{}")
	case "bench":
		need(1)
		bench(ctx, cni, list, args[1], rt)
	default:
		fail(fmt.Errorf("unknown command %q", args[0]))
	}
}

// bench times ADD and DEL of one pod per netns listed in file, one after another,
// and prints the ADD+DEL latency percentiles in milliseconds.
func bench(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, file string,
	rt func(id, netns string) *libcni.RuntimeConf) {
	text, err := os.ReadFile(file)
	if err != nil {
		fail(err)
	}
	var adds, dels, both []float64
	for i, ns := range strings.Fields(string(text)) {
		r := rt(fmt.Sprintf("bench%05d", i), ns)
		t0 := time.Now()
		if _, err := cni.AddNetworkList(ctx, list, r); err != nil {
			fail(fmt.Errorf("ADD %s: %w", ns, err))
		}
		t1 := time.Now()
		if err := cni.DelNetworkList(ctx, list, r); err != nil {
			fail(fmt.Errorf("DEL %s: %w", ns, err))
		}
		t2 := time.Now()
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		adds = append(adds, ms(t1.Sub(t0)))
		dels = append(dels, ms(t2.Sub(t1)))
		both = append(both, ms(t2.Sub(t0)))
	}
	out, _ := json.Marshal(map[string]interface{}{
		"pods":         len(both),
		"add_p50_ms":   pct(adds, 50),
		"add_p99_ms":   pct(adds, 99),
		"del_p50_ms":   pct(dels, 50),
		"del_p99_ms":   pct(dels, 99),
		"total_p50_ms": pct(both, 50),
		"total_p99_ms": pct(both, 99),
	})
	fmt.Println(string(out))
}

func pct(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := (len(s)*p+99)/100 - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

func fail(err error) {
	code := uint(0)
	var terr *types.Error
	if errors.As(err, &terr) {
		code = terr.Code
	}
	out, _ := json.Marshal(map[string]interface{}{
		"error": map[string]interface{}{"code": code, "msg": err.Error()},
	})
	fmt.Println(string(out))
	os.Exit(2)
}
