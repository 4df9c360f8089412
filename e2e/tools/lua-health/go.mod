// Our own program (main.go) on gopher-lua, the Lua engine Argo CD v3.6.2 embeds, pinned
// at the version Argo CD pins: it runs deploy/argocd/health/*.lua as Argo CD does
// (tests/chart/test_gitops.py).
module gpufleet.io/e2e/tools/lua-health

go 1.26.0

require github.com/yuin/gopher-lua v1.1.2
