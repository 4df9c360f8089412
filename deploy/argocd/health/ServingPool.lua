-- Argo CD health of a gpufleet.io ServingPool, from its status.conditions: Ready, and
-- ScalingActive (False in DryRun mode: Suspended).
-- Install: argocd-cm key resource.customizations.health.gpufleet.io_ServingPool (see ../README.md).
-- Argo CD runs it on Lua 5.1 with only the base, table and package libraries: no string.*.
local hs = {status = "Progressing", message = "Waiting for the gpufleet operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local function condition(kind)
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local function describe(c)
  local reason = c.reason or c.type
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < generation then
  hs.message = "The operator has not seen generation " .. generation .. " yet"
  return hs
end
local ready = condition("Ready")
if ready == nil then
  return hs
end
hs.message = describe(ready)
if ready.status == "False" then
  hs.status = "Degraded"
elseif ready.status == "True" then
  hs.status = "Healthy"
  local scaling = condition("ScalingActive")
  if scaling ~= nil and scaling.status == "False" then
    hs.status = "Suspended"
    hs.message = describe(scaling)
  end
end
return hs
