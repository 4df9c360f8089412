// Pins sigs.k8s.io/karpenter for the e2e test bed: its CRDs (pkg/apis/crds/) are read
// from the module cache at this version by e2e/gpufleet_testbed/crds_upstream.py, so the
// Karpenter driver is tested against the real NodePool and NodeClaim schema. v1.13.0 is
// the newest release whose go line the machine's Go (1.26.8) accepts. Nothing is built
// from it yet, so the file is not tidied (tidy would drop the unused require).
module gpufleet.io/e2e/tools/karpenter

go 1.26.4

require sigs.k8s.io/karpenter v1.13.0
