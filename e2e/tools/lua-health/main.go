// Command lua-health runs an Argo CD resource health script (health.lua) on one object
// the way Argo CD v3.6.2 runs a health check from argocd-cm, and prints the health it
// would show:
//
//	lua-health [-open-libs] health.lua object.json   (object "-": stdin)
//
// It prints {"status": ..., "message": ...}, or null when the script returns nil (Argo CD
// then shows no health for the resource). A script error prints status Unknown with the
// error as the message, as Argo CD does; the exit status is 0 for every health and 2 when
// the files cannot be read.
//
// Argo CD's own binary cannot be built here (its gitops-engine module does not resolve),
// so this is our program on the engine Argo CD embeds, github.com/yuin/gopher-lua at the
// version Argo CD v3.6.2 pins (v1.1.2). It mirrors, from Argo CD v3.6.2's util/lua/lua.go
// and gitops-engine's pkg/health/health.go:
//   - the state: standard libraries skipped unless resource.customizations.useOpenLibs
//     is true for the kind (-open-libs here); then package, base and table opened, and
//     a "safe" os (time and date only) preloaded for require("os");
//   - the object as global `obj`, with integers as numbers and null list items dropped;
//   - a 1 s timeout on the script;
//   - the returned table read as JSON into status/message/deletionMessage: a status
//     outside Argo CD's six is Unknown "Lua returned an invalid health status", a table
//     of the wrong shape is an empty health;
//   - a terminating object (metadata.deletionTimestamp, without Argo CD's hook
//     finalizer) shows Progressing "Pending deletion..." unless the script set
//     deletionMessage.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

const (
	scriptTimeout = time.Second
	hookFinalizer = "argocd.argoproj.io/hook-finalizer"
	invalidStatus = "Lua returned an invalid health status"
)

// Argo CD's health codes, in its own order from healthy to unknown.
var validStatus = map[string]bool{
	"Healthy": true, "Suspended": true, "Progressing": true,
	"Missing": true, "Degraded": true, "Unknown": true,
}

type healthStatus struct {
	Status          string `json:"status"`
	Message         string `json:"message"`
	DeletionMessage string `json:"deletionMessage,omitempty"`
}

func main() {
	openLibs := flag.Bool("open-libs", false,
		"open every standard library (argocd-cm resource.customizations.useOpenLibs.<group>_<kind>: true)")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: lua-health [-open-libs] health.lua object.json|-")
		os.Exit(2)
	}
	script, obj, err := readInputs(flag.Arg(0), flag.Arg(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, "lua-health:", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	_ = out.Encode(resourceHealth(obj, script, *openLibs))
}

func readInputs(scriptPath, objectPath string) (string, map[string]any, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return "", nil, err
	}
	var raw []byte
	if objectPath == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(objectPath)
	}
	if err != nil {
		return "", nil, err
	}
	obj, err := decodeObject(raw)
	return string(script), obj, err
}

// decodeObject reads JSON the way Kubernetes' unstructured objects hold it: whole numbers
// as int64, others as float64 (Argo CD's Lua sees both as numbers).
func decodeObject(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("object: %w", err)
	}
	return numbers(obj).(map[string]any), nil
}

func numbers(value any) any {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case map[string]any:
		for key, item := range v {
			v[key] = numbers(item)
		}
	case []any:
		for i, item := range v {
			v[i] = numbers(item)
		}
	}
	return value
}

// resourceHealth is what Argo CD shows for an object whose kind has this health script.
func resourceHealth(obj map[string]any, script string, openLibs bool) *healthStatus {
	health, err := runHealth(obj, script, openLibs)
	if err != nil {
		return &healthStatus{Status: "Unknown", Message: err.Error()}
	}
	if health == nil {
		return nil
	}
	if deleting := pendingDeletion(obj, health); deleting != nil {
		return deleting
	}
	health.DeletionMessage = ""
	return health
}

func pendingDeletion(obj map[string]any, health *healthStatus) *healthStatus {
	meta, _ := obj["metadata"].(map[string]any)
	finalizers := stringList(meta["finalizers"])
	if meta["deletionTimestamp"] == nil || contains(finalizers, hookFinalizer) {
		return nil
	}
	if health.DeletionMessage != "" {
		return &healthStatus{Status: health.Status, Message: health.DeletionMessage}
	}
	message := "Pending deletion"
	if len(finalizers) > 0 {
		message += "; blocked by finalizers: " + strings.Join(finalizers, ", ")
	}
	return &healthStatus{Status: "Progressing", Message: message}
}

func stringList(value any) []string {
	items, _ := value.([]any)
	out := make([]string, 0, len(items))
	for _, item := range items {
		if s, ok := item.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func contains(items []string, want string) bool {
	for _, item := range items {
		if item == want {
			return true
		}
	}
	return false
}

func runHealth(obj map[string]any, script string, openLibs bool) (*healthStatus, error) {
	l := newState(openLibs)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = "" // Argo CD shows the error without Lua's stack trace
	}
	if err != nil {
		return nil, err
	}
	return fromLua(l.Get(-1))
}

// newState opens what Argo CD opens. Its "safe os" is registered under the table
// library's name, which is already loaded, so no global `os` appears: scripts reach
// os.time and os.date only through require("os").
func newState(openLibs bool) *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name))
		if err != nil {
			panic(err)
		}
	}
	safe := safeOs()
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int {
		l.Push(l.SetFuncs(l.NewTable(), safe))
		return 1
	})
	return l
}

// safeOs: os.time and os.date, gopher-lua's own (Argo CD's are copies of them).
func safeOs() map[string]lua.LGFunction {
	full := lua.NewState()
	defer full.Close()
	osLib := full.GetGlobal(lua.OsLibName).(*lua.LTable)
	out := map[string]lua.LGFunction{}
	for _, name := range []string{"time", "date"} {
		out[name] = osLib.RawGetString(name).(*lua.LFunction).GFunction
	}
	return out
}

func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		list := l.CreateTable(len(v), 0)
		for _, item := range v {
			list.Append(toLua(l, item)) // Append skips nil, as in Argo CD
		}
		return list
	case map[string]any:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}

// fromLua reads the script's result as Argo CD does: through JSON into its HealthStatus.
func fromLua(result lua.LValue) (*healthStatus, error) {
	switch result.Type() {
	case lua.LTNil:
		return nil, nil
	case lua.LTTable:
	default:
		return nil, fmt.Errorf("expect table output from Lua script, not %s", result.Type())
	}
	value, err := toJSON(result, map[*lua.LTable]bool{})
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(value)
	health := &healthStatus{}
	if err := json.Unmarshal(raw, health); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return &healthStatus{}, nil // a list, or a field that is not a string
		}
		return nil, err
	}
	if !validStatus[health.Status] {
		return &healthStatus{Status: "Unknown", Message: invalidStatus}, nil
	}
	return health, nil
}

// toJSON follows the encoder Argo CD uses (layeh.com/gopher-json): an empty table is a
// list, a table keyed 1..n a list, a table keyed by strings an object, anything else an
// error.
func toJSON(value lua.LValue, seen map[*lua.LTable]bool) (any, error) {
	switch v := value.(type) {
	case lua.LBool:
		return bool(v), nil
	case lua.LNumber:
		return float64(v), nil
	case lua.LString:
		return string(v), nil
	case *lua.LNilType:
		return nil, nil
	case *lua.LTable:
		if seen[v] {
			return nil, errors.New("cannot encode recursively nested tables to JSON")
		}
		seen[v] = true
		return tableToJSON(v, seen)
	}
	return nil, fmt.Errorf("cannot encode %s to JSON", value.Type())
}

func tableToJSON(table *lua.LTable, seen map[*lua.LTable]bool) (any, error) {
	key, value := table.Next(lua.LNil)
	list, object := []any{}, map[string]any{}
	keyType := key.Type()
	for next := lua.LNumber(1); key != lua.LNil; key, value = table.Next(key) {
		item, err := toJSON(value, seen)
		if err != nil {
			return nil, err
		}
		switch {
		case keyType == lua.LTNumber && key == next:
			list = append(list, item)
			next++
		case keyType == lua.LTNumber && key.Type() == lua.LTNumber:
			return nil, errors.New("cannot encode sparse array")
		case keyType == lua.LTString && key.Type() == lua.LTString:
			object[key.String()] = item
		default:
			return nil, errors.New("cannot encode mixed or invalid key types")
		}
	}
	if keyType == lua.LTString {
		return object, nil
	}
	return list, nil
}
