// farmd's warm javac: one JVM that runs javac in-process, one compile at a time.
//
// farmd builds this file with the JDK it serves and starts it with that JDK's java.
// Protocol on stdin/stdout, big-endian (java.io.Data*):
//   hello:    int 0x46524D31 ("FRM1")
//   request:  int argc, then argc x (int length, UTF-8 bytes)
//   response: int exit code, int n + n bytes stdout, int n + n bytes stderr,
//             long heap used, long heap max
// Every compile goes through javax.tools' Tool.run, which builds a fresh compiler
// context and file manager for that call: nothing a compile loads survives it.
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

public final class FarmJavacHelper {
    public static void main(String[] argv) throws Exception {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        DataInputStream in = new DataInputStream(new BufferedInputStream(System.in));
        DataOutputStream out = new DataOutputStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out)));
        // The protocol owns stdout: anything else printing there would corrupt it.
        System.setOut(new PrintStream(OutputStream.nullOutputStream()));
        out.writeInt(0x46524D31);
        out.flush();
        while (true) {
            int argc;
            try {
                argc = in.readInt();
            } catch (EOFException e) {
                return;
            }
            String[] args = new String[argc];
            for (int i = 0; i < argc; i++) {
                byte[] b = new byte[in.readInt()];
                in.readFully(b);
                args[i] = new String(b, StandardCharsets.UTF_8);
            }
            ByteArrayOutputStream so = new ByteArrayOutputStream();
            ByteArrayOutputStream se = new ByteArrayOutputStream();
            int rc;
            try {
                rc = javac.run(null, so, se, args);
            } catch (Throwable t) {
                // An abnormal end: farm discards this result and runs javac afresh.
                rc = 4;
                se.write(String.valueOf(t).getBytes(StandardCharsets.UTF_8));
            }
            Runtime rt = Runtime.getRuntime();
            out.writeInt(rc);
            out.writeInt(so.size());
            so.writeTo(out);
            out.writeInt(se.size());
            se.writeTo(out);
            out.writeLong(rt.totalMemory() - rt.freeMemory());
            out.writeLong(rt.maxMemory());
            out.flush();
        }
    }
}
