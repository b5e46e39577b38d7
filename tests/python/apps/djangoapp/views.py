import asyncio
import hashlib

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.views.decorators.csrf import csrf_exempt


def index(request):
    return HttpResponse("hello from django\n", content_type="text/plain")


def as_json(request):
    return JsonResponse({"path": request.path, "q": request.GET.get("q"), "script": request.META.get("SCRIPT_NAME")})


@csrf_exempt
def form(request):
    return JsonResponse({"name": request.POST.get("name"), "tags": request.POST.getlist("tag")})


@csrf_exempt
def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse({"filename": f.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def cookie(request):
    resp = HttpResponse("cookie set\n", content_type="text/plain")
    resp.set_cookie("flavour", "oat", httponly=True)
    return resp


def session(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return JsonResponse({"n": request.session["n"]})


def go(request):
    return redirect("/")


def stream(request):
    return StreamingHttpResponse((f"tick {i}\n" for i in range(3)), content_type="text/plain")


def boom(request):
    raise RuntimeError("boom in a django view")


async def async_view(request):
    # An async view: native under ASGI, run in a thread under WSGI.
    await asyncio.sleep(0.01)
    return JsonResponse({"async": True, "path": request.path, "script": request.META.get("SCRIPT_NAME")})
