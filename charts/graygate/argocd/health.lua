-- Argo CD health check for graygate.io/ChangeRequest.
-- Maps the change's phase to an Argo CD health status, with graygate's own message.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for graygate to pick up the change"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "graygate has not seen the latest spec yet"
  return hs
end
local phase = obj.status.phase
local message = obj.status.message or phase
if obj.status.batch ~= nil and string.find(message, obj.status.batch, 1, true) == nil then
  message = "batch " .. obj.status.batch .. ": " .. message
end
hs.message = phase .. ": " .. message
if phase == "Succeeded" or phase == "Superseded" then
  hs.status = "Healthy"
elseif phase == "Pending" or phase == "Progressing" or phase == "Blocked" or phase == "Superseding" then
  hs.status = "Progressing"
elseif phase == "AwaitingApproval" or phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "RollingBack" or phase == "RolledBack" or phase == "Failed" or phase == "Invalid" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
end
return hs
