// Pins sigs.k8s.io/gateway-api-inference-extension (GIE) for the e2e test bed: its CRDs
// (config/crd/bases/) are read from the module cache at this version by
// e2e/gpufleet_testbed/crds_upstream.py, so ServingPools are tested against real GIE
// InferencePools. Nothing is built from it, so the file is not tidied.
module gpufleet.io/e2e/tools/gateway-api-inference-extension

go 1.26.0

require sigs.k8s.io/gateway-api-inference-extension v1.6.2
