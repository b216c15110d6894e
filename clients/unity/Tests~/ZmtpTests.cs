// ZMTP alone, against a pyzmq ROUTER with heartbeats on (tests/test_engine_clients_unity.py): stay connected
// through an idle period by answering PINGs, then round-trip a message with short and long (> 255 B) frames.
using System;
using System.Collections.Generic;
using System.Threading;

namespace Troubadour.Tests
{
    public static class ZmtpTests
    {
        public static int Run(string host, int port)
        {
            var z = ZmtpDealer.Connect(host, port, 3000);
            Console.WriteLine("OK zmtp_connect");
            List<byte[]> reply = null;
            Exception readError = null;
            var reader = new Thread(() =>
            {
                try { reply = z.Receive(); }
                catch (Exception e) { readError = e; }
            }) { IsBackground = true };
            reader.Start();
            Thread.Sleep(1500);   // idle: the peer's heartbeat would drop us unless PINGs get PONGs
            var mid = new byte[300];
            var big = new byte[70000];
            for (int i = 0; i < big.Length; i++) big[i] = (byte)(i * 7);
            for (int i = 0; i < mid.Length; i++) mid[i] = (byte)(255 - i);
            var sent = new List<byte[]> { new byte[0], System.Text.Encoding.ASCII.GetBytes("echo"), mid, big };
            z.Send(sent);
            reader.Join(10000);
            bool same = reply != null && reply.Count == sent.Count;
            for (int i = 0; same && i < sent.Count; i++) same = VectorTests.Diff(reply[i], sent[i], "frame") == null;
            bool ok = same && z.PingsAnswered > 0;
            Console.WriteLine((ok ? "OK" : "FAIL") + " zmtp_heartbeat_and_long_frames" +
                              (ok ? "" : ": pongs " + z.PingsAnswered + ", reply " + (reply == null ? "none" : reply.Count + " frames") +
                                         (readError != null ? ", " + readError.Message : "")));
            z.Dispose();
            return ok ? 0 : 1;
        }
    }
}
