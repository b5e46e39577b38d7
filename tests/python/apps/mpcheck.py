"""multiprocessing.Pool's documented behaviour, checked against ``ngx_pool.Pool``: inside a
pool worker (the fanout app's /mp-checks view) and outside one (``python mpcheck.py``, where
ngx_pool.Pool is multiprocessing.Pool). ``checks()`` answers the list of failures."""

import concurrent.futures
import gc
import itertools
import json
import multiprocessing
import multiprocessing.pool
import os
import pickle
import threading
import time
import warnings

import ngx_pool
from ngx_pool import Pool


def f(x):
    return x * x


def add(a, b):
    return a + b


def fail(x):
    raise ValueError("refused %s" % x)


def unpicklable(x):
    return lambda: x


def sleepy(s):
    time.sleep(s)
    return s


def several_workers():
    return not ngx_pool.in_pool() or ngx_pool._driver._native.workers() >= 2


def gen_then_error():
    yield 1
    yield 2
    yield 3
    raise KeyError("input")


def check_doc_examples():
    # The multiprocessing documentation's "Using a pool of workers" example.
    with Pool(processes=4) as pool:
        assert pool.map(f, range(10)) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(f, range(10))) == [x * x for x in range(10)]
        res = pool.apply_async(f, (20,))
        assert res.get(timeout=1) == 400
        res = pool.apply_async(os.getpid, ())
        assert isinstance(res.get(timeout=1), int)
        multiple_results = [pool.apply_async(os.getpid, ()) for i in range(4)]
        assert all(isinstance(r.get(timeout=1), int) for r in multiple_results)
        assert list(pool.imap(f, range(10))) == [x * x for x in range(10)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(add, (5, 6)) == 11
        assert pool.starmap_async(add, [(1, 1)]).get(5) == [2]
    # "exiting the 'with'-block has stopped the pool"
    try:
        pool.map(f, range(3))
    except ValueError:
        pass
    else:
        raise AssertionError("a map after the with block did not raise ValueError")


def check_get_timeout():
    # res.get(timeout=1) on time.sleep(10) raises multiprocessing.TimeoutError, also when no
    # other worker is free and the caller would run the task itself.
    with Pool(1) as pool:
        res = pool.apply_async(sleepy, (2,))
        t0 = time.monotonic()
        try:
            res.get(timeout=0.3)
        except multiprocessing.TimeoutError:
            pass
        else:
            raise AssertionError("get(timeout=0.3) of a 2 s task returned")
        took = time.monotonic() - t0
        assert took < 1.5, "get(timeout=0.3) took %.2f s" % took
        t0 = time.monotonic()
        res.wait(0.1)
        assert time.monotonic() - t0 < 1.5, "wait(0.1) took too long"
        try:
            res.successful()
        except ValueError:
            pass
        else:
            raise AssertionError("successful() of a task not ready did not raise ValueError")
        assert res.get(timeout=10) == 2
        assert res.successful()


def check_imap_lazy():
    # An endless input: imap returns, and results come as they are ready (one per pool: a
    # multiprocessing pool feeds one input at a time, and an endless one never ends).
    with Pool(2) as pool:
        it = pool.imap(f, itertools.count())
        assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    with Pool(2) as pool:
        it = pool.imap_unordered(f, itertools.count(), chunksize=2)
        assert len([next(it) for _ in range(5)]) == 5
    with Pool(2) as pool:
        assert pool.imap(f, itertools.count()).next(timeout=10) == 0
    for ordered in (True, False):
        with Pool(2) as pool:
            call = pool.imap if ordered else pool.imap_unordered
            it = call(f, gen_then_error())  # must not raise: the error comes from next()
            got = []
            try:
                for x in it:
                    got.append(x)
            except KeyError:
                pass
            else:
                raise AssertionError("the input's KeyError did not come from next()")
            assert set(got) <= {1, 4, 9}, got
            if ordered:
                assert got == [1, 4, 9][: len(got)], got


def check_imap_unordered_order():
    if not several_workers():
        return
    with Pool(2) as pool:
        first = next(pool.imap_unordered(sleepy, [1.0, 0.05]))
        assert first == 0.05, "imap_unordered gave %r first" % first


def check_with_on_terminated_pool():
    pool = Pool(2)
    pool.terminate()
    try:
        with pool:
            pass
    except ValueError as e:
        assert "not running" in str(e), str(e)
    else:
        raise AssertionError("with on a terminated pool did not raise ValueError")
    pool = Pool(2)
    pool.close()
    try:
        pool.apply(f, (1,))
    except ValueError:
        pass
    else:
        raise AssertionError("apply on a closed pool did not raise ValueError")
    pool.join()
    pool = Pool(2)
    try:
        pool.join()
    except ValueError:
        pass
    else:
        raise AssertionError("join on a running pool did not raise ValueError")
    pool.terminate()
    try:
        Pool(0)
    except ValueError:
        pass
    else:
        raise AssertionError("Pool(0) did not raise ValueError")


def check_remote_traceback():
    assert ngx_pool.RemoteTraceback is multiprocessing.pool.RemoteTraceback
    with Pool(2) as pool:
        for run in (lambda: pool.apply(fail, (3,)), lambda: pool.map(fail, [3])):
            try:
                run()
            except ValueError as e:
                cause = e.__cause__
                assert type(cause) is multiprocessing.pool.RemoteTraceback, type(cause)
                assert "in fail" in str(cause), str(cause)
                assert "ValueError: refused 3" in str(cause), str(cause)
            else:
                raise AssertionError("the task's ValueError was not raised")
        errors = []
        r = pool.apply_async(fail, (4,), error_callback=errors.append)
        r.wait(10)
        assert r.ready() and not r.successful()
        assert len(errors) == 1 and isinstance(errors[0], ValueError), errors


def check_maybe_encoding_error():
    # Run on a free worker, and (Pool(1) at workers=1) by the caller itself.
    for processes in (2, 1):
        with Pool(processes) as pool:
            for run in (lambda: pool.apply(unpicklable, (1,)),
                        lambda: pool.map(unpicklable, [1, 2])):
                try:
                    run()
                except multiprocessing.pool.MaybeEncodingError:
                    pass
                else:
                    raise AssertionError("an unpicklable result gave no MaybeEncodingError")
    # An argument that cannot be pickled: the pickling error, from get().
    try:
        pickle.dumps(lambda: 1)
    except Exception as e:  # noqa: BLE001
        expected = type(e)
    with Pool(2) as pool:
        try:
            pool.apply(f, (lambda: 1,))
        except expected:
            pass
        else:
            raise AssertionError("an unpicklable argument gave no %s" % expected.__name__)


def check_resource_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = Pool(2)
        del pool
        gc.collect()
    found = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert found, "a running pool dropped gave no ResourceWarning: %r" % [str(w) for w in caught]
    assert "unclosed running multiprocessing pool" in str(found[0].message), str(found[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = Pool(2)
        pool.close()
        pool.join()
        del pool
        gc.collect()
    found = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not found, "a closed pool dropped gave a ResourceWarning"


def check_threads():
    # Tasks from other threads of the request: helper threads, concurrent.futures threads.
    with Pool(4) as pool:
        with concurrent.futures.ThreadPoolExecutor(4) as tpe:
            futs = [tpe.submit(pool.map, f, range(i * 5, i * 5 + 5)) for i in range(4)]
            got = [x for fut in futs for x in fut.result(timeout=30)]
        assert got == [x * x for x in range(20)], got
        # Queued in a thread, collected in this one, and the other way round.
        box = []
        t = threading.Thread(target=lambda: box.append(pool.apply_async(add, (1, 2))))
        t.start()
        t.join()
        assert box[0].get(timeout=10) == 3
        r = pool.apply_async(add, (2, 3))
        t = threading.Thread(target=lambda: box.append(r.get(timeout=10)))
        t.start()
        t.join()
        assert box[1] == 5, box
    with ngx_pool.Executor(2) as ex:
        with concurrent.futures.ThreadPoolExecutor(3) as tpe:
            futs = [tpe.submit(lambda i=i: ex.submit(add, i, 1).result(timeout=30))
                    for i in range(6)]
            assert [fu.result(timeout=30) for fu in futs] == [1, 2, 3, 4, 5, 6]


CHECKS = [check_doc_examples, check_get_timeout, check_imap_lazy, check_imap_unordered_order,
          check_with_on_terminated_pool, check_remote_traceback, check_maybe_encoding_error,
          check_resource_warning, check_threads]


def checks():
    """The failures, one line each ([] when ngx_pool.Pool behaves as multiprocessing.Pool)."""
    failures = []
    for check in CHECKS:
        try:
            check()
        except Exception as e:  # noqa: BLE001
            failures.append("%s: %s: %s" % (check.__name__, type(e).__name__, e))
    return failures


if __name__ == "__main__":
    assert not ngx_pool.in_pool()
    print(json.dumps(checks()))
