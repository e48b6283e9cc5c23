// Command kubectl is Kubernetes' own kubectl, built from the module pinned in
// ../go.mod, so the real-node run (e2e/node) drives the cluster with the
// client of its own version.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
