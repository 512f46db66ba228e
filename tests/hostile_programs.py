"""Programs that attack the sandbox: (name, source). A program returns or prints "PWNED" only if its attack
worked where it can tell; a write that may have landed in the sandbox's own private /tmp returns "written", and
the test judges it on the host (no file named __PWNED_NAME__ in the places it looks, canaries unchanged).
HOSTILE holds the original corpus, then NEW the attacks of issue 12 (HOSTILE includes them).
Tokens the test replaces before running them:

__PWNED__       an absolute path outside the sandbox, e.g. /tmp/reftune_pwned_<uuid>; nothing may be created there
__PWNED_NAME__  its basename (for relative paths, the home dir, other temp dirs)
__CANARY__      a file the test created outside the sandbox; it must survive unchanged
__CANARY_DIR__  the directory holding it
__SECRET_VAR__  an environment variable set in the test process; its value must not leak
__TEST_PID__    the pid of the test process (the "trainer")
"""

HOSTILE: list[tuple[str, str]] = [
    # --- hangs: wall timeout, CPU limit, kill of the whole process group
    ("while_true", "def solution():\n    while True:\n        pass"),
    ("sleep_forever", "import time\ndef solution():\n    time.sleep(1000)"),
    ("catch_everything_and_loop",
     "def solution():\n    while True:\n        try:\n            while True:\n                pass\n"
     "        except BaseException:\n            pass"),
    ("c_level_loop", "import itertools\ndef solution():\n    return sum(itertools.count())"),
    ("busy_sympy", "from sympy import nextprime\ndef solution():\n    return nextprime(10**3000)"),
    ("infinite_str", "class A:\n    def __str__(self):\n        while True:\n            pass\n"
                     "def solution():\n    return A()"),
    # --- recursion
    ("deep_recursion", "def f(n):\n    return 1 + f(n + 1)\ndef solution():\n    return f(0)"),
    ("recursion_limit_raised",
     "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return 1 + f(n + 1)\ndef solution():\n"
     "    return f(0)"),
    ("parser_bomb", "def solution():\n    return eval('(' * 200000 + ')' * 200000)"),
    # --- fork bombs and subprocesses
    ("os_fork_loop", "import os\ndef solution():\n    while True:\n        os.fork()\n    return 'PWNED'"),
    ("multiprocessing_bomb",
     "import multiprocessing as mp\ndef solution():\n    ps = [mp.Process(target=print) for _ in range(50)]\n"
     "    [p.start() for p in ps]\n    return 'PWNED'"),
    ("subprocess_run", "import subprocess\ndef solution():\n    subprocess.run(['touch', '__PWNED__'])\n"
                       "    return 'PWNED'"),
    ("os_system", "import os\ndef solution():\n    return 'PWNED' if os.system('touch __PWNED__') == 0 else 'refused'"),
    ("os_popen", "import os\ndef solution():\n    return 'PWNED' + os.popen('id').read()"),
    ("os_execv", "import os\ndef solution():\n    os.execv('/bin/sh', ['sh', '-c', 'touch __PWNED__'])"),
    ("posix_spawn", "import os\ndef solution():\n    os.posix_spawn('/usr/bin/touch', ['touch', '__PWNED__'], {})\n"
                    "    return 'PWNED'"),
    ("pty_spawn", "import pty\ndef solution():\n    pty.spawn(['touch', '__PWNED__'])\n    return 'PWNED'"),
    ("popen_via_a_module_that_holds_it",  # subprocess itself cannot be imported, but sympy holds a reference
     "import sympy.printing.gtk as gtk\ndef solution():\n    gtk.subprocess.Popen(['touch', '__PWNED__'])\n"
     "    return 'PWNED'"),
    ("fork_exec_via_a_module_that_holds_it",  # subprocess's own reference to the unaudited _posixsubprocess call
     "import os\nimport sympy.printing.gtk as gtk\ndef solution():\n    r, w = os.pipe()\n"
     "    gtk.subprocess._fork_exec([b'/usr/bin/touch', b'__PWNED__'], [b'/usr/bin/touch'], True, (w,), None, None,\n"
     "                              -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\n"
     "    return 'PWNED'"),
    ("threads_spinning", "import threading\ndef spin():\n    while True:\n        pass\n"
                         "def solution():\n    for _ in range(8):\n"
                         "        threading.Thread(target=spin, daemon=True).start()\n"
                         "    while True:\n        pass"),
    # --- memory
    ("huge_list", "def solution():\n    return len([0] * 10**10)"),
    ("bytearray_1e11", "def solution():\n    return len(bytearray(10**11))"),
    ("string_doubling", "def solution():\n    s = 'x'\n    while True:\n        s += s"),
    ("list_of_lists", "def solution():\n    a = []\n    while True:\n        a.append([0] * 10**6)"),
    ("raise_rlimit_then_allocate",
     "import resource\ndef solution():\n    inf = resource.RLIM_INFINITY\n"
     "    resource.setrlimit(resource.RLIMIT_AS, (inf, inf))\n    return 'PWNED%d' % len(bytearray(4 * 10**9))"),
    ("raise_cpu_rlimit_then_loop",
     "import resource\ndef solution():\n    try:\n        resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n"
     "    except Exception:\n        pass\n    while True:\n        pass"),
    ("prlimit_parent", "import os, resource\ndef solution():\n"
                       "    resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (0, 0))\n    return 'PWNED'"),
    # --- network
    ("socket_connect", "import socket\ndef solution():\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
                       "    return 'PWNED'"),
    ("raw_socket_module", "def solution():\n    s = __import__('_socket')\n    s.socket()\n    return 'PWNED'"),
    ("urllib", "import urllib.request\ndef solution():\n"
               "    return 'PWNED' + str(urllib.request.urlopen('http://127.0.0.1:9/'))"),
    # --- writes outside the sandbox
    ("write_absolute_tmp", "def solution():\n    open('__PWNED__', 'w').write('x')\n    return 'written'"),
    ("write_relative_escape", "def solution():\n    open('../__PWNED_NAME__', 'w').write('x')\n    return 'written'"),
    ("write_home", "import os\ndef solution():\n    open(os.path.expanduser('~/__PWNED_NAME__'), 'w').write('x')\n"
                   "    return 'PWNED'"),
    ("os_open_creat", "import os\ndef solution():\n    os.open('__PWNED__', os.O_CREAT | os.O_WRONLY)\n"
                      "    return 'written'"),
    ("dir_fd_escape", "import os\ndef solution():\n    os.mkdir('a')\n    fd = os.open('.', os.O_RDONLY)\n"
                      "    os.chdir('a')\n    os.open('../../__PWNED_NAME__', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n"
                      "    return 'PWNED'"),
    ("dir_fd_outside", "import os\ndef solution():\n    fd = os.open(os.path.dirname(os.__file__), os.O_RDONLY)\n"
                       "    os.open('__PWNED_NAME__', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n    return 'PWNED'"),
    ("fchdir_escape", "import os\ndef solution():\n    os.mkdir('a')\n    top = os.open('.', os.O_RDONLY)\n"
                      "    os.fchdir(os.open('a', os.O_RDONLY))\n"
                      "    os.open('../__PWNED_NAME__', os.O_CREAT | os.O_WRONLY, dir_fd=top)\n    return 'written'"),
    ("fspath_toctou",  # a path that names the temp dir when checked and /tmp when used
     "import os\nclass P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
     "        return 'inside' if P.n % 2 else '__PWNED__'\n"
     "def solution():\n    open(P(), 'w').write('x')\n    os.open(P(), os.O_CREAT | os.O_WRONLY)\n    return 1"),
    ("symlink_escape", "import os\ndef solution():\n    os.symlink('/tmp', 'link')\n"
                       "    open('link/__PWNED_NAME__', 'w').write('x')\n    return 'written'"),
    ("hardlink_canary", "import os\ndef solution():\n    os.link('__CANARY__', 'h')\n    open('h', 'w').write('')\n"
                        "    return 'PWNED'"),
    ("chdir_escape", "import os\ndef solution():\n    os.chdir('/tmp')\n    open('__PWNED_NAME__', 'w').write('x')\n"
                     "    return 'written'"),
    ("pathlib_write", "import pathlib\ndef solution():\n    pathlib.Path('__PWNED__').write_text('x')\n"
                      "    return 'written'"),
    ("tempfile_in_tmp", "import tempfile\ndef solution():\n"
                        "    tempfile.NamedTemporaryFile(dir='/tmp', prefix='__PWNED_NAME__', delete=False)\n"
                        "    return 'written'"),
    ("mkfifo", "import os\ndef solution():\n    os.mkfifo('__PWNED__')\n    return 'written'"),
    ("rename_out", "import os\ndef solution():\n    open('a', 'w').write('x')\n    os.rename('a', '__PWNED__')\n"
                   "    return 'written'"),
    ("many_files", "def solution():\n    for i in range(10**6):\n        open('f%d' % i, 'w').write('x' * 10**6)"),
    ("many_dirs", "import os\ndef solution():\n    for i in range(10**7):\n        os.mkdir('d%d' % i)"),
    ("proc_self_write", "def solution():\n    open('/proc/self/oom_score_adj', 'w').write('-1000')\n"
                        "    return 'PWNED'"),
    ("proc_self_mem", "def solution():\n    open('/proc/self/mem', 'wb')\n    return 'PWNED'"),
    # --- deleting or changing the canary
    ("remove_canary", "import os\ndef solution():\n    os.remove('__CANARY__')\n    return 'PWNED'"),
    ("unlink_canary_pathlib", "import pathlib\ndef solution():\n    pathlib.Path('__CANARY__').unlink()\n"
                              "    return 'PWNED'"),
    ("rmtree_canary_dir", "import shutil\ndef solution():\n    shutil.rmtree('__CANARY_DIR__')\n    return 'PWNED'"),
    ("truncate_canary_open", "def solution():\n    open('__CANARY__', 'w').write('')\n    return 'PWNED'"),
    ("truncate_canary_os", "import os\ndef solution():\n    os.truncate('__CANARY__', 0)\n    return 'PWNED'"),
    ("rename_canary", "import os\ndef solution():\n    os.rename('__CANARY__', '__CANARY__.moved')\n"
                      "    return 'PWNED'"),
    ("chmod_canary", "import os\ndef solution():\n    os.chmod('__CANARY__', 0)\n    return 'PWNED'"),
    # --- reading secrets
    ("read_etc_shadow", "def solution():\n    return 'PWNED' + open('/etc/shadow').read()"),
    ("read_canary", "def solution():\n    return 'PWNED' + open('__CANARY__').read()"),
    ("environ_secret", "import os\ndef solution():\n    return 'PWNED' + os.environ['__SECRET_VAR__']"),
    ("environ_print", "import os\ndef solution():\n    print(dict(os.environ))\n    return len(os.environ)"),
    ("proc_trainer_environ", "def solution():\n    return 'PWNED' + open('/proc/__TEST_PID__/environ').read()"),
    ("proc_worker_environ", "import os\ndef solution():\n"
                            "    return 'PWNED' + open('/proc/%d/environ' % os.getppid()).read()"),
    ("listdir_home", "import os\ndef solution():\n    return 'PWNED' + str(os.listdir(os.path.expanduser('~')))"),
    # --- signals and the trainer
    ("ignore_signals_then_loop",
     "import signal\ndef solution():\n    for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
     "        try:\n            signal.signal(s, signal.SIG_IGN)\n        except Exception:\n            pass\n"
     "    while True:\n        pass"),
    ("kill_worker", "import os\ndef solution():\n    os.kill(os.getppid(), 9)\n    return 'PWNED'"),
    ("killpg_worker", "import os, signal\ndef solution():\n    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n"
                      "    return 'PWNED'"),
    ("kill_trainer", "import os, signal\ndef solution():\n    os.kill(__TEST_PID__, signal.SIGUSR1)\n"
                     "    return 'PWNED'"),
    ("pidfd_kill_trainer", "import os, signal\ndef solution():\n    fd = os.pidfd_open(__TEST_PID__)\n"
                           "    signal.pidfd_send_signal(fd, signal.SIGUSR1)\n    return 'PWNED'"),
    ("pidfd_kill_via_private_modules",
     "import posix, _signal\ndef solution():\n    fd = posix.pidfd_open(__TEST_PID__)\n"
     "    _signal.pidfd_send_signal(fd, 10)\n    return 'PWNED'"),
    ("renice_trainer", "import os\ndef solution():\n    os.setpriority(os.PRIO_PROCESS, __TEST_PID__, 19)\n"
                       "    return 'PWNED'"),
    ("pin_trainer_to_one_cpu", "import os\ndef solution():\n    os.sched_setaffinity(__TEST_PID__, {0})\n"
                               "    return 'PWNED'"),
    ("set_system_clock", "import time\ndef solution():\n    time.clock_settime(time.CLOCK_REALTIME, time.time())\n"
                         "    return 'PWNED'"),
    ("pthread_kill", "import signal, threading\ndef solution():\n"
                     "    signal.pthread_kill(threading.main_thread().ident, signal.SIGKILL)\n    return 'PWNED'"),
    # --- output floods and protocol corruption
    ("huge_print", "def solution():\n    print('x' * 10**8)\n    return 1"),
    ("print_loop", "def solution():\n    while True:\n        print('spam' * 100)"),
    ("stderr_flood", "import sys\ndef solution():\n    while True:\n        sys.stderr.write('e' * 10000)"),
    ("raw_fd_flood", "import os\ndef solution():\n    for fd in (1, 2):\n        os.write(fd, b'x' * 10**6)\n"
                     "    return 1"),
    ("protocol_garbage", "import os\ndef solution():\n    os.write(3, b'garbage\\n' * 10000)\n    return 1"),
    ("huge_value", "def solution():\n    return 'x' * 10**7"),
    ("huge_int", "def solution():\n    return 10**100000"),
    ("read_stdin", "def solution():\n    return 'PWNED' + input()"),
    # --- exits and crashes
    ("sys_exit", "import sys\ndef solution():\n    sys.exit(0)"),
    ("os__exit", "import os\ndef solution():\n    os._exit(0)"),
    ("module_level_system_exit", "raise SystemExit(3)"),
    ("keyboard_interrupt", "def solution():\n    raise KeyboardInterrupt"),
    ("builtin_exit", "def solution():\n    exit(3)"),
    ("os_abort", "import os\ndef solution():\n    os.abort()"),
    ("segfault", "import faulthandler\ndef solution():\n    faulthandler._sigsegv()"),
    # --- monkey-patching (a following normal program must not notice)
    ("patch_builtins", "import builtins\nbuiltins.int = lambda *a, **k: 7\nbuiltins.print = None\n"
                       "builtins.len = None\ndef solution():\n    return 'patched'"),
    ("patch_math", "import math\nmath.sqrt = lambda x: -1\nmath.pi = 3\ndef solution():\n    return 'patched'"),
    ("patch_sys_modules", "import sys\nsys.modules.clear()\ndef solution():\n    return 'patched'"),
    ("patch_reply_path", "import json, os, sys\njson.dumps = None\nos.write = None\n"
                         "sys.modules['__main__']._send = None\ndef solution():\n    return 'patched'"),
    ("patch_sympy", "import sympy\nsympy.Integer = None\nsympy.symbols = None\ndef solution():\n"
                    "    return 'patched'"),
    # --- ctypes and introspection tricks
    ("ctypes_system", "import ctypes\ndef solution():\n"
                      "    return 'PWNED' if ctypes.CDLL(None).system(b'touch __PWNED__') == 0 else 'refused'"),
    ("ctypes_reimport", "import sys\ndef solution():\n    sys.modules.pop('ctypes', None)\n"
                        "    sys.modules.pop('_ctypes', None)\n"
                        "    import ctypes\n"
                        "    return 'PWNED' if ctypes.CDLL(None).system(b'touch __PWNED__') == 0 else 'refused'"),
    ("ctypes_via_subclasses",  # the worker imported ctypes before forking: find its CDLL class
     "def solution():\n    seen, todo = set(), [object]\n    while todo:\n        c = todo.pop()\n"
     "        if c.__name__ == 'CDLL':\n"
     "            return 'PWNED' if c(None).system(b'touch __PWNED__') == 0 else 'no'\n"
     "        for s in type.__subclasses__(c):\n            if s not in seen:\n                seen.add(s)\n"
     "                todo.append(s)\n    return 'no CDLL'"),
    ("subclasses_os_system",
     "def solution():\n    for c in ().__class__.__base__.__subclasses__():\n"
     "        if c.__name__ == '_wrap_close':\n"
     "            return 'PWNED' if c.__init__.__globals__['system']('touch __PWNED__') == 0 else 'refused'"),
    ("builtins_import_trick", "def solution():\n"
                              "    r = __builtins__.__import__('os').system('touch __PWNED__')\n"
                              "    return 'PWNED' if r == 0 else 'no'"),
    ("exec_string", "def solution():\n    g = {}\n    exec(\"import os; r = os.system('touch __PWNED__')\", g)\n"
                    "    return 'PWNED' if g['r'] == 0 else 'refused'"),
    ("importlib_subprocess", "import importlib\ndef solution():\n"
                             "    importlib.import_module('subprocess').run(['touch', '__PWNED__'])\n"
                             "    return 'PWNED'"),
    ("gc_find_worker_pipes",  # every file object the worker held: its request and reply pipes are closed in the child
     "import gc, io\ndef solution():\n    n = 0\n    for o in gc.get_objects():\n"
     "        if isinstance(o, io.IOBase):\n            try:\n"
     "                o.write(b'{\"ok\": true, \"value\": \"999\"}\\n'); o.flush(); n += 1\n"
     "            except Exception:\n                pass\n    return 'wrote %d' % n"),
    ("own_audit_hook", "import sys, os\nsys.addaudithook(lambda *a: None)\n"
                       "def solution():\n    return 'PWNED' if os.system('touch __PWNED__') == 0 else 'refused'"),
]

_C = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"  # a prologue for the ctypes attacks
_FORGED = "b'{\"ok\": true, \"value\": \"999\", \"error\": null, \"stdout\": \"\"}\\n'"  # a reply for someone else
_SUB = "import _xxsubinterpreters as si\ndef solution():\n    i = si.create()\n"

NEW: list[tuple[str, str]] = [
    # --- the audit hook of the old sandbox, bypassed: then try something real
    ("hook_patch_realpath_then_write_canary",
     "import os\nos.path.realpath = lambda p, **k: '/tmp/sandbox/x'\nos.fsdecode = lambda p: '/tmp/sandbox/x'\n"
     "def solution():\n    open('__CANARY__', 'w').write('PWNED')\n    return 'PWNED'"),
    ("hook_clear_deny_sets_via_closures",
     "import gc, os\ndef solution():\n    for o in gc.get_objects():\n"
     "        if isinstance(o, (set, frozenset)) and 'os.system' in o and isinstance(o, set):\n            o.clear()\n"
     "    return 'PWNED' if os.system('touch __PWNED__') == 0 else 'refused'"),
    ("hook_null_in_memory_then_system",  # scribble over the runtime's hook list; at worst the child crashes
     _C + "def solution():\n    rt = ctypes.c_char.in_dll(ctypes.pythonapi, '_PyRuntime')\n"
     "    ctypes.memset(ctypes.addressof(rt) + 4096, 0, 64)\n"
     "    return 'PWNED' if libc.system(b'touch __PWNED__') == 0 else 'refused'"),
    ("hook_free_subinterpreter_system",
     _SUB + "    si.run_string(i, \"import os; open('r', 'w').write(str(os.system('touch __PWNED__')))\")\n"
            "    return 'PWNED' if open('r').read() == '0' else 'refused'"),
    ("hook_free_subinterpreter_canary", _SUB + "    si.run_string(i, \"open('__CANARY__', 'w').write('PWNED')\")\n"
                                        "    return 'PWNED'"),
    ("hook_free_subinterpreter_spawn",  # os.fork is refused in sub-interpreters by CPython; spawn is not
     _SUB + "    si.run_string(i, \"import os\\ntry:\\n    r = os.posix_spawn('/bin/sh', ['sh'], {})\\n\"\n"
            "                    \"except OSError as e:\\n    r = -1\\nopen('r', 'w').write(str(r))\")\n"
            "    return 'PWNED' if int(open('r').read()) > 0 else 'refused'"),
    ("hook_free_subinterpreter_secret",
     _SUB + "    si.run_string(i, \"import os; open('s', 'w').write(repr(dict(os.environ)))\")\n"
     "    return open('s').read()"),
    ("worker_globals_reached", "import sys\ndef solution():\n    w = sys.modules['__main__']\n"
                               "    w._send(1, {'ok': True, 'value': '999'})\n"
                               "    w._send(0, {'ok': True, 'value': '999'})\n"
                               "    return 'sent'"),
    # --- ctypes into libc and raw syscalls
    ("ctypes_libc_by_name_system", "import ctypes\ndef solution():\n"
                                   "    r = ctypes.CDLL('libc.so.6').system(b'touch __PWNED__')\n"
                                   "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_prctl_clear_no_new_privs", _C + "def solution():\n"
                                        "    r = libc.prctl(38, 0, 0, 0, 0), libc.prctl(39, 0, 0, 0, 0)\n"
                                        "    return 'PWNED' if r == (0, 0) else 'refused'"),
    ("ctypes_kill_parent_sigstop", _C + "def solution():\n    r = libc.kill(os.getppid(), 19)\n"
                                   "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_kill_minus_one", _C + "def solution():\n    r = libc.kill(-1, 9)\n"
                                   "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_kill_pid1", _C + "def solution():\n    r = libc.kill(1, 9)\n    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_sigqueue_parent", _C + "def solution():\n    r = libc.sigqueue(os.getppid(), 19, 0)\n"
                               "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_tkill_parent", _C + "def solution():\n    r = libc.syscall(200, os.getppid(), 19)\n"
                            "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_tgkill_parent", _C + "def solution():\n    r = libc.syscall(234, os.getppid(), os.getppid(), 19)\n"
                             "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_raw_fork", _C + "def solution():\n    r = libc.syscall(57)\n    if r == 0:\n        os._exit(0)\n"
                        "    return 'PWNED' if r > 0 else 'refused'"),
    ("ctypes_raw_clone", _C + "def solution():\n    r = libc.syscall(56, 17, 0, 0, 0, 0)\n    if r == 0:\n"
                         "        import time\n        time.sleep(30)\n    return 'PWNED' if r > 0 else 'refused'"),
    ("ctypes_clone3", _C + "def solution():\n    args = (ctypes.c_uint64 * 11)(0, 0, 0, 0, 17)\n"
                      "    r = libc.syscall(435, ctypes.byref(args), 88)\n    if r == 0:\n        os._exit(0)\n"
                      "    return 'PWNED' if r > 0 else 'refused'"),
    ("ctypes_posix_spawn", _C + "def solution():\n    pid = ctypes.c_int()\n"
                           "    argv = (ctypes.c_char_p * 3)(b'touch', b'__PWNED__', None)\n"
                           "    r = libc.posix_spawnp(ctypes.byref(pid), b'touch', None, None, argv, None)\n"
                           "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_execve_shell", _C + "def solution():\n"
                                 "    argv = (ctypes.c_char_p * 4)(b'sh', b'-c', b'touch __PWNED__', None)\n"
                            "    libc.execve(b'/bin/sh', argv, None)\n    return 'refused'"),
    ("ctypes_ptrace_parent", _C + "def solution():\n    r = libc.ptrace(16, os.getppid(), 0, 0)\n"
                             "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_ptrace_traceme", _C + "def solution():\n    r = libc.ptrace(0, 0, 0, 0)\n"
                              "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_process_vm_writev_parent",
     _C + "def solution():\n    buf = ctypes.create_string_buffer(b'PWNED' * 10)\n"
     "    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 50)\n"
     "    r = libc.syscall(311, os.getppid(), ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)\n"
     "    return 'PWNED' if r > 0 else 'refused'"),
    ("ctypes_unshare_user", _C + "def solution():\n    r = libc.unshare(0x10000000)\n"
                            "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_mount_tmpfs_over_tmp", _C + "def solution():\n    r = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\n"
                                    "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_chroot", _C + "def solution():\n    r = libc.chroot(b'/tmp')\n"
                           "    return 'PWNED' if r == 0 else 'refused'"),
    ("ctypes_bpf_and_perf", _C + "def solution():\n    a = libc.syscall(321, 0, 0, 0)\n"
                            "    b = libc.syscall(298, 0, 0, -1, -1, 0)\n    c = libc.syscall(323, 0)\n"
                            "    return 'PWNED' if max(a, b, c) >= 0 else 'refused'"),
    ("ctypes_x32_abi_syscall", _C + "def solution():\n    return 'PWNED%d' % libc.syscall(0x40000000 + 57)"),
    ("i386_int80_fork",  # machine code: mov eax, 2 (i386 fork); int 0x80; ret
     "import ctypes, mmap\ndef solution():\n    m = mmap.mmap(-1, 4096, prot=7)\n"
     "    m.write(b'\\xb8\\x02\\x00\\x00\\x00\\xcd\\x80\\xc3')\n"
     "    f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))\n"
     "    return 'PWNED%d' % f()"),
    # --- signals to the parent, the worker and the trainer
    ("sigstop_worker", "import os, signal\ndef solution():\n    os.kill(os.getppid(), signal.SIGSTOP)\n"
                       "    return 'PWNED'"),
    ("sigstop_pid_one", "import os, signal\ndef solution():\n    os.kill(1, signal.SIGSTOP)\n    return 'PWNED'"),
    ("sigstop_every_pid", "import os, signal\ndef solution():\n    n = 0\n"
                          "    for pid in set(range(1, 200)) - {os.getpid()}:\n"
                          "        try:\n            os.kill(pid, signal.SIGSTOP)\n"
                          "            n += 1\n"
                          "        except OSError:\n            pass\n    return 'PWNED%d' % n if n else 'refused'"),
    ("killpg_worker_group", "import os, signal\ndef solution():\n"
                            "    os.killpg(os.getpgid(os.getppid()), signal.SIGSTOP)\n"
                            "    return 'PWNED'"),
    ("join_worker_group_then_kill", "import os, signal\ndef solution():\n    os.setpgid(0, os.getpgid(os.getppid()))\n"
                                    "    os.kill(0, signal.SIGKILL)\n    return 'PWNED'"),
    ("kill_trainer_sigkill", "import os\ndef solution():\n    os.kill(__TEST_PID__, 9)\n    return 'PWNED'"),
    ("pidfd_open_parent", "import os\ndef solution():\n    os.pidfd_open(os.getppid())\n    return 'PWNED'"),
    ("prlimit_worker_cpu", "import os, resource\ndef solution():\n"
                           "    resource.prlimit(os.getppid(), resource.RLIMIT_CPU, (1, 1))\n    return 'PWNED'"),
    ("renice_whole_user", "import os\ndef solution():\n    os.setpriority(os.PRIO_USER, 0, 19)\n    return 'PWNED'"),
    ("pin_worker_to_cpu0", "import os\ndef solution():\n    os.sched_setaffinity(os.getppid(), {0})\n"
                           "    return 'PWNED'"),
    ("sigio_stops_the_worker",  # SIGIO, or the F_SETSIG signal, goes to the fd's owner: not a kill() call
     "import fcntl, os, signal\ndef solution():\n    r, w = os.pipe()\n"
     "    fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())\n"
     "    fcntl.fcntl(r, 10, signal.SIGSTOP)\n    fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC)\n    os.write(w, b'x')\n"
     "    return 'sent'"),
    ("sigio_to_the_worker_group",
     "import fcntl, os, signal\ndef solution():\n    r, w = os.pipe()\n"
     "    fcntl.fcntl(r, fcntl.F_SETOWN, -os.getpgid(os.getppid()))\n    fcntl.fcntl(r, 10, signal.SIGKILL)\n"
     "    fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC)\n    os.write(w, b'x')\n    return 'sent'"),
    ("sigio_owner_via_ioctl", "import fcntl, os, signal, socket, struct\ndef solution():\n"
                              "    a, b = socket.socketpair()\n"
                              "    fcntl.ioctl(a, 0x8901, struct.pack('i', os.getppid()))\n"
                              "    fcntl.fcntl(a, 10, signal.SIGSTOP)\n    fcntl.fcntl(a, fcntl.F_SETFL, os.O_ASYNC)\n"
                              "    b.send(b'x')\n    return 'sent'"),
    # --- the trainer through /proc and /sys
    ("proc_scan_kill_pytest",
     "import os, signal\ndef solution():\n    for p in os.listdir('/proc'):\n        if p.isdigit():\n"
     "            if b'pytest' in open('/proc/%s/cmdline' % p, 'rb').read():\n"
     "                os.kill(int(p), signal.SIGKILL)\n                return 'PWNED'\n    return 'none'"),
    ("proc_trainer_root", "def solution():\n    return 'PWNED' + open('/proc/__TEST_PID__/root/etc/hostname').read()"),
    ("proc_parent_fd_reopen", "import os\ndef solution():\n"
                              "    open('/proc/%d/fd/1' % os.getppid(), 'wb').write(" + _FORGED + ")\n"
                                                                                                  "    return 'PWNED'"),
    ("dev_fd_reopen", "def solution():\n    open('/dev/stdout', 'wb').write(" + _FORGED + ")\n    return 'sent'"),
    ("sys_cgroup_kill", "def solution():\n    open('/sys/fs/cgroup/cgroup.kill', 'w').write('1')\n    return 'PWNED'"),
    # --- orphans
    ("fork_setsid_orphan", "import os, time\ndef solution():\n    if os.fork() == 0:\n        os.setsid()\n"
                           "        time.sleep(30)\n        os._exit(0)\n    return 'PWNED'"),
    ("double_fork_daemon", "import os, time\ndef solution():\n    if os.fork() == 0:\n        if os.fork() == 0:\n"
                           "            time.sleep(30)\n        os._exit(0)\n    return 'PWNED'"),
    ("os_spawnv_sleep", "import os\ndef solution():\n    os.spawnv(os.P_NOWAIT, '/bin/sleep', ['sleep', '30'])\n"
                        "    return 'PWNED'"),
    ("thread_outlives_the_reply",  # a thread that keeps trying to reach the worker after solution() returned
     "import os, threading, time\ndef spam():\n    while True:\n        for fd in range(0, 64):\n            try:\n"
     "                os.write(fd, " + _FORGED + ")\n            except OSError:\n                pass\n"
     "        time.sleep(0.001)\ndef solution():\n    threading.Thread(target=spam).start()\n    return 'started'"),
    # --- secrets: environment, account files, existence of paths
    ("environ_via_libc_getenv", _C + "libc.getenv.restype = ctypes.c_char_p\ndef solution():\n"
                                "    v = libc.getenv(b'__SECRET_VAR__')\n"
                                "    return 'PWNED' + v.decode() if v else 'none'"),
    ("environ_via_libc_environ", _C + "def solution():\n"
                                 "    env = ctypes.POINTER(ctypes.c_char_p).in_dll(libc, 'environ')\n"
                                 "    out, i = [], 0\n"
                                 "    while env[i]:\n        out.append(env[i].decode())\n        i += 1\n"
                                 "    return 'env=' + ';'.join(out)"),
    ("environ_of_process_one", "def solution():\n    return 'PWNED' + open('/proc/1/environ').read()"),
    ("readline_reads_passwd", "import readline\ndef solution():\n    readline.read_history_file('/etc/passwd')\n"
                              "    return 'PWNED' + str(readline.get_current_history_length())"),
    ("readline_reads_shadow", "import readline\ndef solution():\n    readline.read_history_file('/etc/shadow')\n"
                              "    return 'PWNED' + str(readline.get_history_item(1))"),
    ("spwd_shadow_entries", "import spwd\ndef solution():\n    e = spwd.getspall()\n"
                            "    return 'PWNED' + str(e) if e else 'none'"),
    ("pwd_host_accounts", "import pwd\ndef solution():\n    e = [p.pw_name for p in pwd.getpwall()]\n"
                          "    return 'PWNED' + str(e) if e else 'none'"),
    ("grp_host_groups", "import grp\ndef solution():\n    e = [g.gr_name for g in grp.getgrall()]\n"
                        "    return 'PWNED' + str(e) if e else 'none'"),
    ("exists_oracle_canary", "import os\ndef solution():\n"
                             "    seen = os.path.exists('__CANARY__') or os.path.isdir('__CANARY_DIR__')\n"
                             "    return 'PWNED' if seen else 'no'"),
    ("readlink_oracle_host", "import os\ndef solution():\n"
                             "    found = [p for p in ('/etc/passwd', '/etc/shadow', '/home', "
                             "'/var', '/proc/1', '/run', '/etc/hostname') if os.path.lexists(p)]\n"
                             "    return 'PWNED' + str(found) if found else 'none'"),
    ("list_root_home", "import os\ndef solution():\n    extra = set(os.listdir('/root')) - {'.pyenv'}\n"
                       "    return 'PWNED' + str(extra) if extra else 'only the bound python'"),
    ("read_host_identity", "def solution():\n    for p in ('/etc/hostname', '/etc/hosts', '/etc/machine-id'):\n"
                           "        try:\n            return 'PWNED' + open(p).read()\n"
                           "        except OSError:\n            pass\n    return 'none'"),
    # --- writes through odd APIs
    ("readline_history_to_canary", "import readline\ndef solution():\n    readline.add_history('PWNED')\n"
                                   "    readline.write_history_file('__CANARY__')\n    return 'PWNED'"),
    ("readline_history_to_pwned", "import readline\ndef solution():\n    readline.add_history('x')\n"
                                  "    readline.write_history_file('__PWNED__')\n    return 'written'"),
    ("readline_append_to_canary", "import readline\ndef solution():\n    readline.add_history('PWNED')\n"
                                  "    readline.append_history_file(1, '__CANARY__')\n    return 'PWNED'"),
    ("utime_readonly_fd_stdlib", "import os\ndef solution():\n    fd = os.open(os.__file__, os.O_RDONLY)\n"
                                 "    os.utime(fd, (0, 0))\n    return 'PWNED'"),
    ("utime_stdlib_path", "import os\ndef solution():\n    os.utime(os.__file__, None)\n    return 'PWNED'"),
    ("utime_canary", "import os\ndef solution():\n    os.utime('__CANARY__', (0, 0))\n    return 'PWNED'"),
    ("append_to_stdlib", "import os\ndef solution():\n    open(os.__file__, 'a').write('\\nPWNED = 1\\n')\n"
                         "    return 'PWNED'"),
    ("append_to_sympy", "import sympy\ndef solution():\n    open(sympy.__file__, 'a').write('\\nPWNED = 1\\n')\n"
                        "    return 'PWNED'"),
    ("chmod_stdlib", "import os\ndef solution():\n    os.chmod(os.__file__, 0o777)\n    return 'PWNED'"),
    ("hardlink_stdlib_then_write", "import os\ndef solution():\n    os.link(os.__file__, 'h')\n"
                                   "    open('h', 'a').write('PWNED')\n    return 'PWNED'"),
    ("plant_module_in_stdlib", "import os\ndef solution():\n"
                               "    open(os.path.join(os.path.dirname(os.__file__), 'math2.py'), 'w').write('x')\n"
                               "    return 'PWNED'"),
    ("write_dev_shm", "def solution():\n    open('/dev/shm/__PWNED_NAME__', 'w').write('x')\n    return 'written'"),
    ("sqlite_into_canary_dir", "import sqlite3\ndef solution():\n"
                               "    sqlite3.connect('__CANARY_DIR__/__PWNED_NAME__.db').execute('create table t(x)')\n"
                               "    return 'PWNED'"),
    ("logging_handler_canary", "import logging\ndef solution():\n    h = logging.FileHandler('__CANARY__')\n"
                               "    h.emit(logging.makeLogRecord({'msg': 'PWNED'}))\n    return 'PWNED'"),
    # --- the next program: forged replies, stolen input, state left behind
    ("forge_reply_on_every_fd", "import os\ndef solution():\n    for fd in range(0, 1024):\n        try:\n"
                                "            os.write(fd, " + _FORGED + " * 4)\n        except OSError:\n"
                                "            pass\n    return 'sent'"),
    ("forge_reply_on_sys_dunder_streams", "import sys\ndef solution():\n"
                                          "    for s in (sys.__stdout__, sys.__stderr__):\n"
                                          "        s.buffer.write(" + _FORGED + ")\n        s.flush()\n"
                                          "    return 'sent'"),
    ("steal_next_program_from_stdin", "import os, sys\ndef solution():\n    got = os.read(0, 1 << 16)\n"
                                      "    got += sys.__stdin__.buffer.read1(1 << 16)\n"
                                      "    return 'PWNED' + repr(got) if got else 'nothing'"),
    ("dup_worker_fds", "import os\ndef solution():\n    got = []\n    for fd in range(0, 64):\n        try:\n"
                       "            got.append(os.fstat(fd).st_ino)\n        except OSError:\n            pass\n"
                       "    return 'fds=%d' % len(got)"),
    ("fill_tmp", "def solution():\n    i = 0\n    while True:\n"
                 "        open('/tmp/fill%d' % i, 'wb').write(b'x' * 10**6)\n"
                 "        i += 1"),
    ("lock_out_tmp", "import os\ndef solution():\n    os.makedirs('/tmp/reftune_sbx_next/deep')\n"
                     "    os.chmod('/tmp/reftune_sbx_next/deep', 0)\n    os.chmod('/tmp/reftune_sbx_next', 0)\n"
                     "    os.chmod('.', 0)\n    os.chmod('/tmp', 0)\n    return 'locked'"),
    ("sysv_shared_memory", _C + "def solution():\n    r = libc.shmget(0x5EED, 4096, 0o1666)\n"
                           "    return 'PWNED' if r >= 0 else 'refused'"),
    ("posix_message_queue", _C + "def solution():\n    r = libc.mq_open(b'/pwned', 0o102, 0o666, None)\n"
                            "    return 'PWNED' if r >= 0 else 'refused'"),
    ("posix_shared_memory", "from multiprocessing import shared_memory\ndef solution():\n"
                            "    shared_memory.SharedMemory('__PWNED_NAME__', create=True, size=4096)\n"
                            "    return 'written'"),
    # --- unix sockets and the network
    ("unix_socket_to_host_services", "import socket\ndef solution():\n"
                                     "    for p in ('/var/run/docker.sock', '/run/dbus/system_bus_socket',\n"
                                     "              '/tmp/.X11-unix/X0'):\n"
                                     "        try:\n            socket.socket(socket.AF_UNIX).connect(p)\n"
                                     "            return 'PWNED' + p\n        except OSError:\n            pass\n"
                                     "    return 'none'"),
    ("unix_socket_abstract", "import socket\ndef solution():\n    s = socket.socket(socket.AF_UNIX)\n"
                             "    s.connect('\\0/tmp/.X11-unix/X0')\n    return 'PWNED'"),
    ("raw_socket_syscall", _C + "def solution():\n    r = libc.syscall(41, 1, 1, 0)\n"
                           "    return 'PWNED' if r >= 0 else 'refused'"),
    ("udp_dns", "import socket\ndef solution():\n    socket.getaddrinfo('example.com', 80)\n    return 'PWNED'"),
    ("socketpair_then_inet", "import socket\ndef solution():\n    a, b = socket.socketpair()\n"
                             "    socket.create_connection(('10.0.0.1', 80), timeout=0.2)\n    return 'PWNED'"),
]
HOSTILE += NEW
