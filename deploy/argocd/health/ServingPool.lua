-- Argo CD health of a gpufleet.io ServingPool, from its status.conditions (Ready).
-- Install: argocd-cm key resource.customizations.health.gpufleet.io_ServingPool (see ../README.md).
local hs = {status = "Progressing", message = "Waiting for the gpufleet operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < generation then
  hs.message = "The operator has not seen generation " .. generation .. " yet"
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    local text = (condition.reason or "") .. ": " .. (condition.message or "")
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif condition.status == "False" then
      hs.status = "Degraded"
    end
    hs.message = text
    return hs
  end
end
return hs
