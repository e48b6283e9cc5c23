// Command kube-proxy is Kubernetes' own kube-proxy, built from the module pinned in
// ../go.mod: Services in iptables mode on the real node (e2e/node).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
