// Command kube-scheduler is Kubernetes' own kube-scheduler, built from the module pinned in
// ../go.mod: the scheduler, for the single real node (e2e/node).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
