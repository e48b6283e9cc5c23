// Command kubelet is Kubernetes' own kubelet, built from the module pinned in
// ../go.mod: the node agent: runs pods through containerd (e2e/node).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand()))
}
