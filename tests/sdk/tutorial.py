"""The tutorial's operations with the official Azure SDK for Python, unmodified: only the ARM
endpoint (`base_url`), the Entra authority, the IMDS host and the CA to trust come from the
environment. Each operation prints one JSON line; the exit code is 0 only when every one
succeeded.

Environment: UAMI_SDK_ARM (https://host:port), UAMI_SDK_AUTHORITY (https://host:port),
UAMI_SDK_TENANT, UAMI_SDK_CLIENT_ID, UAMI_SDK_SECRET, UAMI_SDK_SUBSCRIPTION,
UAMI_SDK_RESOURCE_GROUP, UAMI_SDK_VM, and for the SDK itself REQUESTS_CA_BUNDLE (the emulator's
CA) and AZURE_POD_IDENTITY_AUTHORITY_HOST (the VM's IMDS, as azure-identity documents for a
non-default IMDS endpoint).
"""

import json
import os
import sys
import time
import traceback
import uuid

from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.resource.resources import ResourceManagementClient

ARM = os.environ["UAMI_SDK_ARM"].rstrip("/")
AUTHORITY = os.environ["UAMI_SDK_AUTHORITY"].rstrip("/")
TENANT = os.environ["UAMI_SDK_TENANT"]
SUB = os.environ["UAMI_SDK_SUBSCRIPTION"]
RG = os.environ["UAMI_SDK_RESOURCE_GROUP"]
VM = os.environ["UAMI_SDK_VM"]
SCOPES = ["https://management.azure.com/.default"]
NAME = "sdk-identity"

failures = []


def step(op, fn):
    """Run one operation and print its outcome."""
    started = time.time()
    try:
        detail = fn()
        seconds = round(time.time() - started, 2)
        print(json.dumps({"op": op, "ok": True, "seconds": seconds, "detail": detail}), flush=True)
        return detail
    except Exception as e:  # every failure is reported, then the next step runs
        failures.append(op)
        print(
            json.dumps({"op": op, "ok": False, "error": f"{type(e).__name__}: {e}",
                        "trace": traceback.format_exc(limit=3)}),
            flush=True,
        )
        return None


# The credential of an administrator (a service principal with a client secret), through MSAL:
# discovery of the authority's v2.0 document, then the token endpoint. An authority Microsoft
# does not list needs instance discovery off, as for any private cloud.
admin = ClientSecretCredential(
    TENANT,
    os.environ["UAMI_SDK_CLIENT_ID"],
    os.environ["UAMI_SDK_SECRET"],
    authority=AUTHORITY,
    disable_instance_discovery=True,
)
kw = {"base_url": ARM, "credential_scopes": SCOPES}
msi = ManagedServiceIdentityClient(admin, SUB, **kw)
compute = ComputeManagementClient(admin, SUB, **kw)
auth = AuthorizationManagementClient(admin, SUB, **kw)
resources = ResourceManagementClient(admin, SUB, **kw)
rg_scope = f"/subscriptions/{SUB}/resourceGroups/{RG}"

step("ClientSecretCredential.get_token", lambda: bool(admin.get_token(*SCOPES).token))
step("ResourceGroups.Get", lambda: resources.resource_groups.get(RG).name)

# 1. Create the identity.
identity = step(
    "UserAssignedIdentities.CreateOrUpdate",
    lambda: msi.user_assigned_identities.create_or_update(RG, NAME, {"location": "eastus"}).as_dict(),
)
step("UserAssignedIdentities.Get", lambda: msi.user_assigned_identities.get(RG, NAME).client_id)
step(
    "UserAssignedIdentities.ListByResourceGroup",
    lambda: [i.name for i in msi.user_assigned_identities.list_by_resource_group(RG)],
)
identity = identity or {}
identity_id = identity.get("id", "")
client_id = identity.get("client_id", "")
principal_id = identity.get("principal_id", "")

# 2. Assign it to the VM: read the VM, then update it with the identity (a long-running
# operation the SDK polls). The Compute SDK's models are sent as written: REST (camelCase) keys.
vm = step("VirtualMachines.Get", lambda: compute.virtual_machines.get(RG, VM).as_dict())


def assign():
    current = (vm or {}).get("identity") or {}
    kinds = {k.strip() for k in (current.get("type") or "").split(",") if k.strip() and k.strip() != "None"}
    kinds.add("UserAssigned")
    kind = ", ".join(sorted(kinds, key=lambda k: k != "SystemAssigned"))
    poller = compute.virtual_machines.begin_update(
        RG, VM, {"identity": {"type": kind, "userAssignedIdentities": {identity_id: {}}}}
    )
    result = poller.result()
    ids = list(((result.identity and result.identity.user_assigned_identities) or {}).keys())
    assert any(i.lower() == identity_id.lower() for i in ids), ids
    return ids


step("VirtualMachines.Update (assign)", assign)

# 3. Grant Reader on the resource group.
reader = step(
    "RoleDefinitions.List (roleName eq 'Reader')",
    lambda: [d.id for d in auth.role_definitions.list(rg_scope, filter="roleName eq 'Reader'")][0],
)
assignment_name = str(uuid.uuid4())
step(
    "RoleAssignments.Create",
    lambda: auth.role_assignments.create(
        rg_scope,
        assignment_name,
        {"role_definition_id": reader, "principal_id": principal_id, "principal_type": "ServicePrincipal"},
    ).id,
)
step(
    "RoleAssignments.ListForScope",
    lambda: [a.name for a in auth.role_assignments.list_for_scope(rg_scope, filter=f"principalId eq '{principal_id}'")],
)

# 4. On the VM: a token from IMDS with the identity's client id, then read the resource group
# with it (403 until the assignment has propagated).
vm_identity = ManagedIdentityCredential(client_id=client_id)
step("ManagedIdentityCredential.get_token", lambda: bool(vm_identity.get_token(*SCOPES).token))


def read_as_identity():
    as_identity = ResourceManagementClient(vm_identity, SUB, **kw)
    deadline = time.time() + 60
    denied = 0
    while True:
        try:
            return {"name": as_identity.resource_groups.get(RG).name, "denied_first": denied}
        except HttpResponseError as e:
            if e.status_code != 403 or time.time() > deadline:
                raise
            denied += 1
            time.sleep(0.5)


step("ResourceGroups.Get (as the identity)", read_as_identity)

# Clean up in reverse.
step("RoleAssignments.Delete", lambda: auth.role_assignments.delete(rg_scope, assignment_name) and True)


def unassign():
    # As the VM was before: other user-assigned identities stay (this one set to null), or
    # without any, the type goes back to what it was.
    before = (vm or {}).get("identity") or {}
    others = before.get("userAssignedIdentities") or {}
    if others:
        patch = {"type": before["type"], "userAssignedIdentities": {identity_id: None}}
    else:
        system = "SystemAssigned" in (before.get("type") or "")
        patch = {"type": "SystemAssigned" if system else "None"}
    poller = compute.virtual_machines.begin_update(RG, VM, {"identity": patch})
    result = poller.result()
    ids = list(((result.identity and result.identity.user_assigned_identities) or {}).keys())
    assert not any(i.lower() == identity_id.lower() for i in ids), ids
    return ids


step("VirtualMachines.Update (unassign)", unassign)
step("UserAssignedIdentities.Delete", lambda: msi.user_assigned_identities.delete(RG, NAME) or True)

print(json.dumps({"failures": failures}), flush=True)
sys.exit(1 if failures else 0)
