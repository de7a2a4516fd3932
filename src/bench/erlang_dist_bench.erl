%% Erlang/OTP distribution peer of `vcos bench cluster` (src/bench/cluster.rs): two nodes on
%% loopback, a gen_server `vcos_echo` on node B, the client on node A.
%% Build+run: see erlang_dist_bench.sh. Output lines: erlang_dist <metric> <value> <unit>
%%
%% The same work as the v-COS side (src/bench/kinds.rs):
%% - asks: C client processes on A, N calls in all, each `gen_server:call` answered with the
%%   count (`ping` adds one);
%% - tells: N `gen_server:cast`s from one process on A by windows of W, each window closed by a
%%   `get` call; done when the last call answers (the echo has then counted all N: messages
%%   between two processes arrive in order).
-module(erlang_dist_bench).
-behaviour(gen_server).
-export([server/0, client/1, init/1, handle_call/3, handle_cast/2]).

-define(ECHO, vcos_echo).
-define(WARMUP, 1000).

%% Node B.
server() ->
    {ok, _} = gen_server:start({local, ?ECHO}, ?MODULE, [], []),
    ok.

init([]) -> {ok, 0}.
handle_call(ping, _From, N) -> {reply, N + 1, N + 1};
handle_call(get, _From, N) -> {reply, N, N}.
handle_cast(ping, N) -> {noreply, N + 1}.

%% Node A: client([NodeB, Asks, Concurrency, Tells, Window, Runs]) (atoms, from `erl -s`).
client([NodeB | Nums]) ->
    [Asks, Conc, Tells, Window, Runs] = [list_to_integer(atom_to_list(A)) || A <- Nums],
    ok = wait_for(NodeB, 200),
    Echo = {?ECHO, NodeB},
    out("otp_release", list_to_integer(erlang:system_info(otp_release)), "release"),
    asks(Echo, ?WARMUP, 1),
    lists:foreach(
        fun(_) ->
            {AskUs, AskN} = asks(Echo, Asks, Conc),
            out("ask_roundtrips", AskN / (AskUs / 1.0e6), "rt/s"),
            {TellUs, TellN} = tells(Echo, Tells, Window),
            out("tell_throughput", TellN / (TellUs / 1.0e6), "msgs/s")
        end,
        lists:seq(1, Runs)),
    rpc:cast(NodeB, init, stop, []),
    halt(0).

now_us() -> erlang:monotonic_time(microsecond).
out(Metric, V, Unit) when is_float(V) -> io:format("erlang_dist ~s ~.3f ~s~n", [Metric, V, Unit]);
out(Metric, V, Unit) -> io:format("erlang_dist ~s ~p ~s~n", [Metric, V, Unit]).

%% Node B is up and its echo registered (B starts beside A: allow it a few seconds).
wait_for(_NodeB, 0) -> io:format(standard_error, "node B never came up~n", []), halt(2);
wait_for(NodeB, Tries) ->
    case net_adm:ping(NodeB) of
        pong ->
            case rpc:call(NodeB, erlang, whereis, [?ECHO]) of
                Pid when is_pid(Pid) -> ok;
                _ -> timer:sleep(50), wait_for(NodeB, Tries - 1)
            end;
        pang -> timer:sleep(50), wait_for(NodeB, Tries - 1)
    end.

%% C processes, N calls in all; {microseconds, calls}.
asks(Echo, N, C) ->
    Self = self(),
    Per = max(1, N div C),
    Pids = [spawn(fun() -> receive go -> ok end, call_n(Echo, Per), Self ! done end) || _ <- lists:seq(1, C)],
    T0 = now_us(),
    [P ! go || P <- Pids],
    [receive done -> ok end || _ <- Pids],
    {now_us() - T0, Per * C}.

call_n(_Echo, 0) -> ok;
call_n(Echo, K) -> _ = gen_server:call(Echo, ping), call_n(Echo, K - 1).

%% N casts by windows of W, each closed by a call; {microseconds, casts}.
tells(Echo, N, W) ->
    Base = gen_server:call(Echo, get),
    T0 = now_us(),
    Last = windows(Echo, N, W, Base),
    T1 = now_us(),
    case Last - Base of
        N -> ok;
        Got -> io:format(standard_error, "echo counted ~p of ~p casts~n", [Got, N]), halt(3)
    end,
    {T1 - T0, N}.

windows(Echo, Left, _W, Count) when Left =< 0 -> max(Count, gen_server:call(Echo, get));
windows(Echo, Left, W, _Count) ->
    Batch = min(W, Left),
    cast_n(Echo, Batch),
    Count = gen_server:call(Echo, get),
    case Left - Batch of
        0 -> Count;
        Rest -> windows(Echo, Rest, W, Count)
    end.

cast_n(_Echo, 0) -> ok;
cast_n(Echo, K) -> gen_server:cast(Echo, ping), cast_n(Echo, K - 1).
