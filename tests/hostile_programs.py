"""Programs that attack the sandbox: (name, source). A program returns or prints "PWNED" only if its attack
worked. Tokens the test replaces before running them:

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
    ("os_system", "import os\ndef solution():\n    os.system('touch __PWNED__')\n    return 'PWNED'"),
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
    ("write_absolute_tmp", "def solution():\n    open('__PWNED__', 'w').write('x')\n    return 'PWNED'"),
    ("write_relative_escape", "def solution():\n    open('../__PWNED_NAME__', 'w').write('x')\n    return 'PWNED'"),
    ("write_home", "import os\ndef solution():\n    open(os.path.expanduser('~/__PWNED_NAME__'), 'w').write('x')\n"
                   "    return 'PWNED'"),
    ("os_open_creat", "import os\ndef solution():\n    os.open('__PWNED__', os.O_CREAT | os.O_WRONLY)\n"
                      "    return 'PWNED'"),
    ("dir_fd_escape", "import os\ndef solution():\n    os.mkdir('a')\n    fd = os.open('.', os.O_RDONLY)\n"
                      "    os.chdir('a')\n    os.open('../../__PWNED_NAME__', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n"
                      "    return 'PWNED'"),
    ("dir_fd_outside", "import os\ndef solution():\n    fd = os.open(os.path.dirname(os.__file__), os.O_RDONLY)\n"
                       "    os.open('__PWNED_NAME__', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n    return 'PWNED'"),
    ("fchdir_escape", "import os\ndef solution():\n    os.mkdir('a')\n    top = os.open('.', os.O_RDONLY)\n"
                      "    os.fchdir(os.open('a', os.O_RDONLY))\n"
                      "    os.open('../__PWNED_NAME__', os.O_CREAT | os.O_WRONLY, dir_fd=top)\n    return 'PWNED'"),
    ("fspath_toctou",  # a path that names the temp dir when checked and /tmp when used
     "import os\nclass P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
     "        return 'inside' if P.n % 2 else '__PWNED__'\n"
     "def solution():\n    open(P(), 'w').write('x')\n    os.open(P(), os.O_CREAT | os.O_WRONLY)\n    return 1"),
    ("symlink_escape", "import os\ndef solution():\n    os.symlink('/tmp', 'link')\n"
                       "    open('link/__PWNED_NAME__', 'w').write('x')\n    return 'PWNED'"),
    ("hardlink_canary", "import os\ndef solution():\n    os.link('__CANARY__', 'h')\n    open('h', 'w').write('')\n"
                        "    return 'PWNED'"),
    ("chdir_escape", "import os\ndef solution():\n    os.chdir('/tmp')\n    open('__PWNED_NAME__', 'w').write('x')\n"
                     "    return 'PWNED'"),
    ("pathlib_write", "import pathlib\ndef solution():\n    pathlib.Path('__PWNED__').write_text('x')\n"
                      "    return 'PWNED'"),
    ("tempfile_in_tmp", "import tempfile\ndef solution():\n"
                        "    tempfile.NamedTemporaryFile(dir='/tmp', prefix='__PWNED_NAME__', delete=False)\n"
                        "    return 'PWNED'"),
    ("mkfifo", "import os\ndef solution():\n    os.mkfifo('__PWNED__')\n    return 'PWNED'"),
    ("rename_out", "import os\ndef solution():\n    open('a', 'w').write('x')\n    os.rename('a', '__PWNED__')\n"
                   "    return 'PWNED'"),
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
    ("ctypes_system", "import ctypes\ndef solution():\n    ctypes.CDLL(None).system(b'touch __PWNED__')\n"
                      "    return 'PWNED'"),
    ("ctypes_reimport", "import sys\ndef solution():\n    sys.modules.pop('ctypes', None)\n"
                        "    sys.modules.pop('_ctypes', None)\n"
                        "    import ctypes\n    ctypes.CDLL(None).system(b'touch __PWNED__')\n    return 'PWNED'"),
    ("ctypes_via_subclasses",  # the worker imported ctypes before forking: find its CDLL class
     "def solution():\n    seen, todo = set(), [object]\n    while todo:\n        c = todo.pop()\n"
     "        if c.__name__ == 'CDLL':\n            c(None).system(b'touch __PWNED__')\n            return 'PWNED'\n"
     "        for s in type.__subclasses__(c):\n            if s not in seen:\n                seen.add(s)\n"
     "                todo.append(s)\n    return 'no CDLL'"),
    ("subclasses_os_system",
     "def solution():\n    for c in ().__class__.__base__.__subclasses__():\n"
     "        if c.__name__ == '_wrap_close':\n"
     "            c.__init__.__globals__['system']('touch __PWNED__')\n            return 'PWNED'"),
    ("builtins_import_trick", "def solution():\n    __builtins__.__import__('os').system('touch __PWNED__')\n"
                              "    return 'PWNED'"),
    ("exec_string", "def solution():\n    exec(\"import os; os.system('touch __PWNED__')\")\n    return 'PWNED'"),
    ("importlib_subprocess", "import importlib\ndef solution():\n    importlib.import_module('subprocess')\n"
                             "    return 'PWNED'"),
    ("gc_get_objects", "import gc\ndef solution():\n    return 'PWNED%d' % len(gc.get_objects())"),
    ("own_audit_hook", "import sys, os\nsys.addaudithook(lambda *a: None)\n"
                       "def solution():\n    os.system('touch __PWNED__')\n    return 'PWNED'"),
]
