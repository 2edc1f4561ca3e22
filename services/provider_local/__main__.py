from shared.service import Hooks, ServiceContext, run_service

from .subscribers import wire


async def _wire(ctx: ServiceContext) -> Hooks:
    compute = await wire(ctx)
    return Hooks(after_start=compute.adopt_orphans, before_stop=compute.shutdown)


if __name__ == "__main__":
    run_service("provider_local", owns=("provider_local",), wire=_wire)
