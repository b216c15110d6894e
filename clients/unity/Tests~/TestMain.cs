// Console test program, compiled with mcs together with ../Runtime (see tests/test_engine_clients_unity.py):
//   mono TroubadourTests.exe vectors PATH/vectors.json
//   mono TroubadourTests.exe unit
//   mono TroubadourTests.exe zmtp HOST PORT      (a ROUTER that echoes, with ZMTP heartbeats on)
//   mono TroubadourTests.exe server HOST PORT
//   mono TroubadourTests.exe loading HOST PORT   (a server still loading its model)
//   mono TroubadourTests.exe badreply HOST PORT  (tests/fakeserver.py: undecodable server messages)
// Prints "OK name" / "FAIL name: why" lines; exits 1 when anything failed.
using System;

namespace Troubadour.Tests
{
    public static class TestMain
    {
        public static int Main(string[] args)
        {
            Console.Out.Flush();
            var stdout = new System.IO.StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
            Console.SetOut(stdout);   // line by line: the driver reacts to CMD lines at once
            try
            {
                int failures;
                if (args.Length == 2 && args[0] == "vectors") failures = VectorTests.Run(args[1]);
                else if (args.Length == 1 && args[0] == "unit") failures = UnitTests.Run();
                else if (args.Length == 3 && args[0] == "zmtp") failures = ZmtpTests.Run(args[1], int.Parse(args[2]));
                else if (args.Length == 3 && args[0] == "server") failures = new ServerTests().Run(args[1], int.Parse(args[2]));
                else if (args.Length == 3 && args[0] == "loading") failures = new ServerTests().RunLoading(args[1], int.Parse(args[2]));
                else if (args.Length == 3 && args[0] == "badreply") failures = new ServerTests().RunBadReplies(args[1], int.Parse(args[2]));
                else
                {
                    Console.Error.WriteLine("usage: TroubadourTests.exe vectors FILE | unit | zmtp HOST PORT | server|loading|badreply HOST PORT");
                    return 2;
                }
                return failures == 0 ? 0 : 1;
            }
            catch (Exception e)
            {
                Console.WriteLine("FAIL crashed: " + e.ToString().Replace("\n", " | "));
                return 1;
            }
        }
    }
}
