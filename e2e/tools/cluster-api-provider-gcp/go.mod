// Pins Cluster API Provider GCP (CAPG) and the Cluster API release it is built against:
// CAPG v1.13.1 requires sigs.k8s.io/cluster-api v1.13.2, while e2e/tools/cluster-api pins
// v1.14.2 for the MachineDeployment tests. The MachinePool and GCPManagedMachinePool CRDs
// are read from the module cache at these versions by e2e/gpufleet_testbed/crds_upstream.py.
// Nothing is built from it, so the file is not tidied.
module gpufleet.io/e2e/tools/cluster-api-provider-gcp

go 1.26.0

require (
	sigs.k8s.io/cluster-api v1.13.2
	sigs.k8s.io/cluster-api-provider-gcp v1.13.1
)
