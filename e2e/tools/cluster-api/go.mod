// Pins sigs.k8s.io/cluster-api for the e2e test bed: its CRDs (core/config/crd/bases/)
// are read from the module cache at this version by e2e/gpufleet_testbed/crds_upstream.py,
// so the ClusterAPI driver is tested against the real schema, not a hand-written one.
// Nothing is built from it, so the file is not tidied (tidy would drop the unused require).
module gpufleet.io/e2e/tools/cluster-api

go 1.26.0

require sigs.k8s.io/cluster-api v1.14.2
